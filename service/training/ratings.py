"""Per-person ratings: each person scores items on one numeric scale (individual preferences).

The JSONL format is documented in `service/data/FORMAT.md` ("Per-person ratings"). In short, every
line is one rating

    {"person": "5c9ff...", "item": "The Bee Sting By Paul Murray",
     "text": "The Bee Sting By Paul Murray (Fiction): In Murray's ...", "score": 3, "scale": [1, 4],
     "prompt": "How likely would you be to read this book?", "attributes": {"party": "Democrat"}}

and a file is a whole `RatingsDataset`: items and people in order of first appearance. Every problem
is reported as a `DatasetError` naming the file and the 1-based line.

Relative feedback comes from the ratings: `comparisons(ds, person)` gives every pair of items the
person rated differently (ties carry no preference and are left out).

The NYT books ratings (Meister et al. 2024) are imported by `import_nytbooks` and ship as
`service/data/nytbooks/nytbooks_ratings.jsonl.gz` (see PROVENANCE.md there); `load_nytbooks()` reads
them. Regenerate with `gpo import nytbooks ROOT OUT` or `python -m service.training.ratings ROOT OUT`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from service.training.records import (
    DatasetError,
    RecordProblem,
    check_field_names,
    compact_number,
    encode_line,
    is_number,
    nonempty_str,
    read_records,
    write_records,
)

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("person", "item", "text", "score", "scale")
OPTIONAL_FIELDS = ("prompt", "attributes")


# ---------------------------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class RatedItem:
    """One thing people rate: a stable id and the text shown to them."""

    item_id: str
    text: str  # the item as shown to a person, e.g. "The Bee Sting By Paul Murray (Fiction): <summary>"


@dataclass
class RatingsDataset:
    """Raw scores of people on items, all on one scale; a person need not rate every item."""

    items: list[RatedItem]  # fixed order (source order / first appearance)
    people: list[str]  # fixed order
    scores: dict[str, dict[str, float]]  # person -> item_id -> raw score on the scale
    scale: tuple[float, float]  # (lowest, highest) possible score, e.g. (1.0, 4.0)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # person -> attribute -> value
    prompt: str = ""  # the question every item answers, e.g. "How likely would you be to read this book?"

    def item(self, item_id: str) -> RatedItem:
        for it in self.items:
            if it.item_id == item_id:
                return it
        raise KeyError(f"unknown item {item_id!r}")

    def normalized(self, score: float) -> float:
        """`score` mapped linearly from the scale to [0, 1] (lowest -> 0, highest -> 1)."""
        lo, hi = self.scale
        return (float(score) - lo) / (hi - lo)

    def rated(self, person: str) -> list[str]:
        """Item ids `person` rated, in dataset item order (KeyError for an unknown person)."""
        mine = self._scores_of(person)
        return [it.item_id for it in self.items if it.item_id in mine]

    def matrix(self, people: Sequence[str] | None = None) -> np.ndarray:
        """[n_people, n_items] normalised scores (rows: `people`, default all; columns: item order); NaN = unrated."""
        rows = self.people if people is None else list(people)
        col = {it.item_id: j for j, it in enumerate(self.items)}
        out = np.full((len(rows), len(self.items)), np.nan, dtype=np.float64)
        lo, hi = self.scale
        for i, p in enumerate(rows):
            for item_id, s in self._scores_of(p).items():
                out[i, col[item_id]] = (s - lo) / (hi - lo)
        return out

    def n_ratings(self) -> int:
        return sum(len(v) for v in self.scores.values())

    def _scores_of(self, person: str) -> dict[str, float]:
        try:
            return self.scores[person]
        except KeyError:
            raise KeyError(f"unknown person {person!r}") from None


def comparisons(ds: RatingsDataset, person: str, item_ids: Sequence[str] | None = None) -> list[tuple[str, str, float]]:
    """Every pair (a, b) of items `person` rated differently, with label 1.0 when a scored higher, else 0.0.

    a comes before b in dataset item order; pairs are listed in that order (a, then b). With `item_ids`,
    only those items are used (ids the person did not rate are ignored; ids unknown to the dataset are a
    KeyError). Ties carry no preference and are left out.
    """
    mine = ds._scores_of(person)
    if item_ids is None:
        keep = None
    else:
        keep = set(item_ids)
        unknown = sorted(keep - {it.item_id for it in ds.items})
        if unknown:
            raise KeyError(f"unknown items {unknown[:5]}")
    rated = [
        (it.item_id, mine[it.item_id]) for it in ds.items if it.item_id in mine and (keep is None or it.item_id in keep)
    ]
    out = []
    for i, (a, sa) in enumerate(rated):
        for b, sb in rated[i + 1 :]:
            if sa != sb:
                out.append((a, b, 1.0 if sa > sb else 0.0))
    return out


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Rating:
    person: str
    item: RatedItem
    score: float
    scale: tuple[float, float]
    prompt: str | None
    attributes: dict[str, str] | None


def read_ratings_jsonl(path: str | os.PathLike[str]) -> RatingsDataset:
    """Read a `.jsonl` or `.jsonl.gz` ratings file (gzip recognised by its magic bytes).

    Blank lines are skipped (they still count for line numbers). Raises `DatasetError` on any malformed
    line or an empty file, and `FileNotFoundError` when the file does not exist.
    """
    path = Path(path)
    items: dict[str, tuple[RatedItem, int]] = {}  # item id -> (item, line first defined)
    people: dict[str, int] = {}  # person -> line of first appearance
    attributes: dict[str, tuple[dict[str, str], int]] = {}  # person -> (attributes, line first given)
    scores: dict[str, dict[str, float]] = {}
    seen: dict[tuple[str, str], int] = {}  # (person, item) -> line
    scale: tuple[tuple[float, float], int] | None = None
    prompt: tuple[str, int] | None = None

    def add(lineno: int, obj: dict[str, Any]) -> None:
        """Check a rating on its own and against the lines before it, then register it."""
        nonlocal scale, prompt
        rec = _parse_rating(obj)
        key = (rec.person, rec.item.item_id)
        if key in seen:
            raise RecordProblem(
                f"duplicate rating of item {rec.item.item_id!r} by person {rec.person!r} (first on line {seen[key]})"
            )
        if scale is None:
            scale = (rec.scale, lineno)
        elif rec.scale != scale[0]:
            raise RecordProblem(
                f"scale {_shown(rec.scale)} differs from {_shown(scale[0])} on line {scale[1]} (one scale per file)"
            )
        if rec.prompt is not None:
            if prompt is None:
                prompt = (rec.prompt, lineno)
            elif rec.prompt != prompt[0]:
                raise RecordProblem(f"'prompt' differs from line {prompt[1]}")
        if rec.item.item_id in items:
            first, first_line = items[rec.item.item_id]
            if first.text != rec.item.text:
                raise RecordProblem(f"item {rec.item.item_id!r}: 'text' differs from line {first_line}")
        if rec.attributes is not None:
            if rec.person in attributes and attributes[rec.person][0] != rec.attributes:
                raise RecordProblem(f"person {rec.person!r}: 'attributes' differ from line {attributes[rec.person][1]}")
            attributes.setdefault(rec.person, (rec.attributes, lineno))
        items.setdefault(rec.item.item_id, (rec.item, lineno))
        people.setdefault(rec.person, lineno)
        seen[key] = lineno
        scores.setdefault(rec.person, {})[rec.item.item_id] = rec.score

    read_records(path, add)
    if scale is None:
        raise DatasetError(path, None, "no ratings in the file")
    return RatingsDataset(
        items=[it for it, _ in items.values()],
        people=list(people),
        scores=scores,
        scale=scale[0],
        attributes={p: dict(attributes[p][0]) if p in attributes else {} for p in people},
        prompt=prompt[0] if prompt is not None else "",
    )


def _parse_rating(obj: Mapping[str, Any]) -> _Rating:
    """Check one decoded line on its own; raises `RecordProblem` describing the first problem."""
    check_field_names(obj, REQUIRED_FIELDS, OPTIONAL_FIELDS)
    person = nonempty_str(obj, "person")
    item_id = nonempty_str(obj, "item")
    text = nonempty_str(obj, "text")

    sc = obj["scale"]
    if not (isinstance(sc, list) and len(sc) == 2 and all(is_number(v) for v in sc)):
        raise RecordProblem(f"field 'scale' must be a list of two numbers [lowest, highest], got {sc!r}")
    lo, hi = float(sc[0]), float(sc[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RecordProblem("field 'scale' has a non-finite value")
    if not lo < hi:
        raise RecordProblem(f"field 'scale' must have lowest < highest, got {sc!r}")

    score = obj["score"]
    if not is_number(score):
        raise RecordProblem(f"field 'score' must be a number, got {score!r}")
    score = float(score)
    if not math.isfinite(score):
        raise RecordProblem("field 'score' is not finite")
    if not lo <= score <= hi:
        shown = f"[{compact_number(lo)}, {compact_number(hi)}]"
        raise RecordProblem(f"score {compact_number(score)} is outside the scale {shown}")

    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise RecordProblem(f"field 'prompt' must be a string, got {type(prompt).__name__}")

    attrs = obj.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, dict) or not all(isinstance(k, str) and k for k in attrs):
            raise RecordProblem("field 'attributes' must be an object with non-empty names")
        bad = sorted(k for k, v in attrs.items() if not isinstance(v, str))
        if bad:
            raise RecordProblem(f"field 'attributes': values must be strings (not for {bad})")
        attrs = dict(attrs)

    return _Rating(
        person=person,
        item=RatedItem(item_id=item_id, text=text),
        score=score,
        scale=(lo, hi),
        prompt=prompt,
        attributes=attrs,
    )


# ---------------------------------------------------------------------------------------------- writing


def write_ratings_jsonl(ds: RatingsDataset, path: str | os.PathLike[str]) -> None:
    """Write `ds` to `path` (gzip when the name ends in `.gz`, mtime 0: the same data gives the same bytes).

    Lines are item-major: for each item of `ds.items`, the people who rated it in `ds.people` order.
    Reading the file back gives the same items in the same order, and the same people order whenever
    people are ordered by the first item they rated (true of any dataset read from a file, and of the
    NYT import). `prompt` and non-empty `attributes` are written on every line. An item nobody rated,
    a person without ratings, or a score for an unknown person or item cannot be represented and is an
    error; every line is checked exactly as `read_ratings_jsonl` would check it.

    Atomic: the data goes to a temporary file in the same folder that replaces `path` only when
    complete; on any error nothing is left behind and an existing `path` is untouched.
    """
    path = Path(path)
    item_ids = [it.item_id for it in ds.items]
    if len(set(item_ids)) != len(item_ids):
        raise DatasetError(path, None, "duplicate item ids")
    if len(set(ds.people)) != len(ds.people):
        raise DatasetError(path, None, "duplicate people")
    unknown_people = sorted(set(ds.scores) - set(ds.people))
    if unknown_people:
        raise DatasetError(path, None, f"scores of people not in the dataset: {unknown_people[:5]}")
    known = set(item_ids)
    unknown_items = sorted({i for p in ds.people for i in ds.scores.get(p, {}) if i not in known})
    if unknown_items:
        raise DatasetError(path, None, f"scores of items not in the dataset: {unknown_items[:5]}")
    silent = [p for p in ds.people if not ds.scores.get(p)]
    if silent:
        raise DatasetError(path, None, f"people without any rating cannot be written: {silent[:5]}")
    rated = {i for p in ds.people for i in ds.scores[p]}
    unrated = [i for i in item_ids if i not in rated]
    if unrated:
        raise DatasetError(path, None, f"items without any rating cannot be written: {unrated[:5]}")

    write_records(path, lambda out: _write_lines(ds, path, out))


def _write_lines(ds: RatingsDataset, path: Path, out: IO[bytes]) -> None:
    scale = _shown(ds.scale)
    lineno = 0
    for it in ds.items:
        for p in ds.people:
            score = ds.scores[p].get(it.item_id)
            if score is None:
                continue
            lineno += 1
            obj: dict[str, Any] = {"person": p, "item": it.item_id, "text": it.text}
            obj["score"] = compact_number(score)
            obj["scale"] = scale
            if ds.prompt:
                obj["prompt"] = ds.prompt
            attrs = ds.attributes.get(p)
            if attrs:
                obj["attributes"] = dict(attrs)
            try:
                _parse_rating(obj)
            except RecordProblem as e:
                raise DatasetError(path, lineno, f"person {p!r}, item {it.item_id!r}: {e}") from None
            out.write(encode_line(obj))


def _shown(scale: tuple[float, float]) -> list[int | float]:
    return [compact_number(scale[0]), compact_number(scale[1])]


# ---------------------------------------------------------------------------------------------- NYT books

NYT_PROMPT = "How likely would you be to read this book?"
NYT_DATA = "data.json"
NYT_RATINGS = Path("individual_annotations") / "NYTIMES_proportions_ID.json"
NYT_DEMOGRAPHICS = Path("individual_annotations") / "nytimes_annotator_demographics.csv"
NYT_ID_COLUMN = "Q84"
# demographics CSV column -> attribute name, in the order attributes are written
NYT_ATTRIBUTES: dict[str, str] = {
    "QDem_Gend": "gender",
    "QDem_Race": "race",
    "Q_DemRepub": "party",
    "QDem_Income": "income",
    "QDem_Age": "age",
}
_BOOK_FIELDS = frozenset({"MC_options", "genre", "summary"})  # every other key of a book is a group
SHIPPED_FILE = ("nytbooks", "nytbooks_ratings.jsonl.gz")  # under the service.data package

Resolve = Literal["raise", "drop", "first", "last"]


@dataclass(frozen=True)
class NytImportNotes:
    """What the NYT import found besides the ratings: repeats, conflicts and how they were resolved."""

    entries: int  # (book, group, annotator) entries in the ratings file
    repeated: int  # entries repeating an (annotator, book) rating already read under another group
    rating_conflicts: tuple[tuple[str, str, tuple[float, ...]], ...]  # (annotator, book, distinct scores)
    demographic_rows: int
    repeated_demographic_rows: int  # rows whose annotator id appeared on an earlier row
    attribute_conflicts: tuple[tuple[str, str, tuple[str, ...]], ...]  # (annotator, attribute, values)
    without_attributes: tuple[str, ...]  # annotators with ratings but no demographics row

    def lines(self) -> list[str]:
        """Human-readable summary (what `gpo import nytbooks` prints)."""
        out = [
            f"{self.entries} (book, group, annotator) entries, {self.repeated} repeats of the same rating "
            "under another group",
            f"{len(self.rating_conflicts)} (annotator, book) pairs with conflicting ratings",
            f"{self.demographic_rows} demographics rows, {self.repeated_demographic_rows} repeated annotator ids, "
            f"{len(self.attribute_conflicts)} conflicting attribute values",
        ]
        out += [f"  conflict: annotator {a}, {name}: {list(vals)}" for a, name, vals in self.attribute_conflicts]
        if self.without_attributes:
            out.append(f"{len(self.without_attributes)} annotators without demographics")
        return out


def import_nytbooks(
    root: str | os.PathLike[str],
    *,
    on_rating_conflict: Resolve = "raise",
    on_attribute_conflict: Resolve = "drop",
) -> RatingsDataset:
    """The NYT books per-annotator ratings from the source folder (see `import_nytbooks_with_notes`)."""
    ds, _ = import_nytbooks_with_notes(
        root, on_rating_conflict=on_rating_conflict, on_attribute_conflict=on_attribute_conflict
    )
    return ds


def import_nytbooks_with_notes(
    root: str | os.PathLike[str],
    *,
    on_rating_conflict: Resolve = "raise",
    on_attribute_conflict: Resolve = "drop",
) -> tuple[RatingsDataset, NytImportNotes]:
    """Build the ratings dataset from the NYT books folder (`data.json`, `individual_annotations/`).

    - items: the books of `data.json` that someone rated, in file order; id = the book key ("Title By
      Author"), text = f"{key} ({genre}): {summary}"; scale = the numbers of `MC_options` (1..4);
    - ratings: `NYTIMES_proportions_ID.json` lists an annotator under each of their groups (party and
      gender), so one (annotator, book) rating appears up to twice: it is kept once. Two different
      scores for one (annotator, book) are a conflict: "raise" (default) refuses the import, "drop"
      leaves the pair out, "first" / "last" keep the score met first / last (book, group, annotator order);
    - people: annotators in order of first appearance (book order, then group, then annotator);
    - attributes: the demographics CSV (id column Q84), renamed to gender/race/party/income/age, values
      as written. A repeated id with identical values is one person; differing values of one
      attribute are resolved by `on_attribute_conflict` ("drop", the default, leaves that attribute out).
    """
    root = Path(root)
    books = _read_json(root / NYT_DATA)
    ratings_src = _read_json(root / NYT_RATINGS)
    if not isinstance(books, dict) or not isinstance(ratings_src, dict):
        raise ValueError(f"{root}: {NYT_DATA} and {NYT_RATINGS} must hold JSON objects keyed by book")

    labels: dict[str, float] = {}  # "k: label" -> k, identical for every book
    items: list[RatedItem] = []
    for key, book in books.items():
        options = book.get("MC_options")
        if not isinstance(options, list) or not options:
            raise ValueError(f"{root / NYT_DATA}: book {key!r} has no MC_options")
        these = {o: _option_score(o, root / NYT_DATA, key) for o in options}
        if labels and these != labels:
            raise ValueError(f"{root / NYT_DATA}: book {key!r} has options {options}, unlike the other books")
        labels = these
        items.append(RatedItem(item_id=key, text=f"{key} ({book['genre']}): {book['summary']}"))
    if not labels:
        raise ValueError(f"{root / NYT_DATA}: no books")
    scale = (min(labels.values()), max(labels.values()))

    unknown_books = sorted(set(ratings_src) - set(books))
    if unknown_books:
        raise ValueError(f"{root / NYT_RATINGS}: books not in {NYT_DATA}: {unknown_books[:5]}")
    found: dict[str, dict[str, list[float]]] = {}  # annotator -> book -> scores in source order
    entries = 0
    for key in books:
        for group, annotators in ratings_src.get(key, {}).items():
            if group in _BOOK_FIELDS:
                continue
            if not isinstance(annotators, dict):
                raise ValueError(f"{root / NYT_RATINGS}: book {key!r}, group {group!r}: expected an object")
            for person, label in annotators.items():
                if label not in labels:
                    raise ValueError(
                        f"{root / NYT_RATINGS}: book {key!r}, group {group!r}, annotator {person!r}: "
                        f"rating {label!r} is not one of {list(labels)}"
                    )
                entries += 1
                found.setdefault(person, {}).setdefault(key, []).append(labels[label])

    conflicts = tuple(
        (p, b, tuple(dict.fromkeys(v))) for p, bs in found.items() for b, v in bs.items() if len(set(v)) > 1
    )
    if conflicts and on_rating_conflict == "raise":
        shown = "; ".join(f"{p} on {b!r}: {list(v)}" for p, b, v in conflicts[:5])
        raise ValueError(
            f"{root / NYT_RATINGS}: {len(conflicts)} (annotator, book) pairs have conflicting ratings "
            f"(e.g. {shown}); pass on_rating_conflict='drop', 'first' or 'last' to resolve them"
        )
    scores: dict[str, dict[str, float]] = {}
    for p, bs in found.items():
        mine = {}
        for b, v in bs.items():
            if len(set(v)) > 1:
                if on_rating_conflict == "drop":
                    continue
                mine[b] = v[0] if on_rating_conflict == "first" else v[-1]
            else:
                mine[b] = v[0]
        if mine:
            scores[p] = mine
    rated = {b for s in scores.values() for b in s}
    items = [it for it in items if it.item_id in rated]
    # By the first book a person rated, ties in order of first appearance: the order a file written by
    # write_ratings_jsonl (item-major) reads back in (the same as first appearance unless ratings were dropped).
    position = {it.item_id: j for j, it in enumerate(items)}
    people = sorted(scores, key=lambda p: min(position[b] for b in scores[p]))  # stable sort

    demo, n_rows, n_repeated, attr_conflicts = _read_demographics(root / NYT_DEMOGRAPHICS, on_attribute_conflict)
    attributes = {p: demo.get(p, {}) for p in people}
    notes = NytImportNotes(
        entries=entries,
        repeated=entries - sum(len(v) for v in found.values()),
        rating_conflicts=conflicts,
        demographic_rows=n_rows,
        repeated_demographic_rows=n_repeated,
        attribute_conflicts=tuple(c for c in attr_conflicts if c[0] in scores),
        without_attributes=tuple(p for p in people if p not in demo),
    )
    ds = RatingsDataset(
        items=items, people=people, scores=scores, scale=scale, attributes=attributes, prompt=NYT_PROMPT
    )
    log.info("NYT books: %d people, %d items, %d ratings", len(people), len(items), ds.n_ratings())
    for line in notes.lines():
        log.info("%s", line)
    return ds, notes


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _option_score(option: Any, path: Path, book: str) -> float:
    """1.0 for "1: Very unlikely"."""
    head = option.split(":", 1)[0] if isinstance(option, str) else ""
    try:
        value = float(head)
    except ValueError:
        raise ValueError(f"{path}: book {book!r}: option {option!r} does not start with 'number:'") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: book {book!r}: option {option!r} has a non-finite number")
    return value


def _read_demographics(
    path: Path, on_conflict: Resolve
) -> tuple[dict[str, dict[str, str]], int, int, list[tuple[str, str, tuple[str, ...]]]]:
    """annotator -> attributes, the number of rows, of repeated-id rows, and the conflicting values found."""
    values: dict[str, dict[str, list[str]]] = {}  # annotator -> attribute -> values in row order
    n_rows = n_repeated = 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (NYT_ID_COLUMN, *NYT_ATTRIBUTES) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        for row in reader:
            n_rows += 1
            person = row[NYT_ID_COLUMN]
            if not person:
                raise ValueError(f"{path}, row {n_rows + 1}: empty {NYT_ID_COLUMN}")
            n_repeated += person in values
            mine = values.setdefault(person, {})
            for col, name in NYT_ATTRIBUTES.items():
                if row[col]:
                    mine.setdefault(name, []).append(row[col])

    out: dict[str, dict[str, str]] = {}
    conflicts = []
    for person, attrs in values.items():
        resolved = {}
        for name in NYT_ATTRIBUTES.values():
            vals = attrs.get(name)
            if not vals:
                continue
            if len(set(vals)) > 1:
                conflicts.append((person, name, tuple(dict.fromkeys(vals))))
                if on_conflict == "drop":
                    continue
                if on_conflict == "raise":
                    raise ValueError(
                        f"{path}: annotator {person!r} has conflicting {name} values {list(dict.fromkeys(vals))}; "
                        "pass on_attribute_conflict='drop', 'first' or 'last' to resolve them"
                    )
                resolved[name] = vals[0] if on_conflict == "first" else vals[-1]
            else:
                resolved[name] = vals[0]
        out[person] = resolved
    return out, n_rows, n_repeated, conflicts


def import_nytbooks_to(
    root: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    on_rating_conflict: Resolve = "raise",
    on_attribute_conflict: Resolve = "drop",
) -> tuple[RatingsDataset, NytImportNotes]:
    """Import the NYT books folder and write it atomically as ratings JSONL(.gz); `gpo import nytbooks` runs this."""
    ds, notes = import_nytbooks_with_notes(
        root, on_rating_conflict=on_rating_conflict, on_attribute_conflict=on_attribute_conflict
    )
    write_ratings_jsonl(ds, out_path)
    log.info("wrote %s", out_path)
    return ds, notes


def shipped_nytbooks_path() -> Path:
    """Path of the processed NYT books ratings shipped inside the `service.data` package."""
    return Path(str(resources.files("service.data").joinpath(*SHIPPED_FILE)))


def load_nytbooks() -> RatingsDataset:
    """The shipped NYT books ratings: 335 people, 235 books, 9,048 ratings (see service/data/nytbooks/PROVENANCE.md)."""
    ref = resources.files("service.data").joinpath(*SHIPPED_FILE)
    with resources.as_file(ref) as path:
        return read_ratings_jsonl(path)


def summary_lines(ds: RatingsDataset) -> Iterator[str]:
    """Counts of a ratings dataset: people, items, ratings, ratings per person, score distribution."""
    per = sorted(len(v) for v in ds.scores.values())
    yield f"{len(ds.people)} people, {len(ds.items)} items, {ds.n_ratings()} ratings"
    if per:
        yield f"ratings per person: min {per[0]}, median {float(np.median(per)):g}, max {per[-1]}"
    dist: dict[float, int] = {}
    for v in ds.scores.values():
        for s in v.values():
            dist[s] = dist.get(s, 0) + 1
    yield "scores: " + ", ".join(f"{compact_number(s)}: {n}" for s, n in sorted(dist.items()))


def main(argv: list[str] | None = None) -> None:
    """`python -m service.training.ratings ROOT OUT`: regenerate the processed NYT books ratings."""
    parser = argparse.ArgumentParser(description="Import the NYT books ratings into the ratings JSONL format.")
    parser.add_argument("root", help="NYT books folder (data.json, individual_annotations/)")
    parser.add_argument("out", help="output .jsonl or .jsonl.gz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds, _ = import_nytbooks_to(args.root, args.out)
    for line in summary_lines(ds):
        log.info("%s", line)


if __name__ == "__main__":
    main()
