"""Per-person ratings: each person scores items on one numeric scale (individual preferences).

The JSONL format is documented in `service/data/FORMAT.md` ("Per-person ratings"). In short, every
line is one rating

    {"person": "5c9ff...", "item": "The Bee Sting By Paul Murray",
     "text": "The Bee Sting By Paul Murray (Fiction): In Murray's ...", "score": 3, "scale": [1, 4],
     "prompt": "How likely would you be to read this book?", "attributes": {"party": "Democrat"}}

and a file is a whole `RatingsDataset`: items and people in order of first appearance. Every problem
is reported as a `DatasetError` (service/training/records.py) naming the file and the 1-based line.

Relative feedback comes from the ratings: `comparisons(ds, person)` gives every pair of items the
person rated differently (ties carry no preference and are left out).

The NYT books ratings (Meister et al. 2024) are imported by `service/training/nytbooks.py`, which also
loads the shipped file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
