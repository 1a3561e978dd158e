"""The NYT books ratings (Meister et al. 2024): import the source folder into the per-person ratings format.

The import ships as `service/data/nytbooks/nytbooks_ratings.jsonl.gz` (see PROVENANCE.md there);
`load_nytbooks()` reads it. Regenerate with `gpo import nytbooks ROOT OUT` or
`python -m service.training.nytbooks ROOT OUT`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from service.training.ratings import RatedItem, RatingsDataset, read_ratings_jsonl, summary_lines, write_ratings_jsonl

log = logging.getLogger(__name__)

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


def main(argv: list[str] | None = None) -> None:
    """`python -m service.training.nytbooks ROOT OUT`: regenerate the processed NYT books ratings."""
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
