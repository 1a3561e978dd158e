"""A user's own table as group answer distributions: a long CSV with a column mapping, or a JSONL with other keys.

Both end in `jsonl.AnswerCollector`, so they are held to exactly the rules `read_jsonl` applies (FORMAT.md);
`write_jsonl` writes the result. Problems are `DatasetError`s naming the file and the 1-based line (in a CSV the
header is line 1).

CSV (`read_csv_table`): one row per (group, question, option) with a count or a share. The rows of one
(group, question) form its distribution, in any order and anywhere in the file; a question's options are in the
order of its first group's rows, and every group lists the same options (a count of 0 where nobody chose one).
JSONL (`read_mapped_jsonl`): one object per (group, question), as FORMAT.md, under keys renamed by a field map.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.training.datasets import PreferenceDataset
from service.training.jsonl import OPTIONAL_FIELDS, REQUIRED_FIELDS, AnswerCollector
from service.training.records import DatasetError, RecordProblem, read_records

TAG_SEPARATOR = ";"  # a CSV tags cell lists a question's tags separated by this
FIELDS = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)


@dataclass(frozen=True)
class CsvColumns:
    """Which column of the CSV holds what; exactly one of `count` / `share`."""

    group: str
    question_id: str
    question: str
    option: str
    count: str | None = None
    share: str | None = None
    attribute: str | None = None
    ordinal: str | None = None
    tags: str | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.share is None):
            raise ValueError("give exactly one of a count column (--count) or a share column (--share)")

    def used(self) -> list[str]:
        """The column names given, in field order."""
        return [v for v in vars(self).values() if v is not None]


@dataclass
class _Block:
    """The rows of one (group, question)."""

    line: int  # the first row's
    group: str
    qid: str
    text: str
    attribute: str | None
    tags: tuple[str, ...]
    values: dict[str, float] = field(default_factory=dict)  # option -> count or share
    ordinals: dict[str, float | None] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- CSV


def read_csv_table(path: str | os.PathLike[str], columns: CsvColumns, delimiter: str = ",") -> PreferenceDataset:
    """The dataset of a long CSV (module docstring); raises `DatasetError` on the first problem."""
    path = Path(path)
    blocks: dict[tuple[str, str], _Block] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DatasetError(path, None, "empty file: no header row")
            where = _column_indices(path, header, columns, delimiter)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DatasetError(path, reader.line_num, f"{len(row)} fields, the header has {len(header)}")
                try:
                    _add_row(blocks, reader.line_num, {name: row[i] for name, i in where.items()}, columns)
                except RecordProblem as e:
                    raise DatasetError(path, reader.line_num, str(e)) from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise DatasetError(path, reader.line_num or None, f"unreadable CSV ({e})") from None
    return _collect(path, blocks, "counts" if columns.count is not None else "distribution")


def _column_indices(path: Path, header: list[str], columns: CsvColumns, delimiter: str) -> dict[str, int]:
    """column name -> its index, for every column `columns` names."""
    missing = [c for c in columns.used() if c not in header]
    if missing:
        raise DatasetError(path, 1, f"missing column(s) {missing}; the header has {header} (delimiter {delimiter!r})")
    twice = sorted({c for c in columns.used() if header.count(c) > 1})
    if twice:
        raise DatasetError(path, 1, f"column(s) {twice} appear more than once in the header")
    return {c: header.index(c) for c in columns.used()}


def _add_row(blocks: dict[tuple[str, str], _Block], line: int, cells: Mapping[str, str], columns: CsvColumns) -> None:
    def optional(name: str | None) -> str | None:
        return cells[name] if name is not None and cells[name] != "" else None

    group, qid, option = cells[columns.group], cells[columns.question_id], cells[columns.option]
    for name, value in ((columns.group, group), (columns.question_id, qid), (columns.option, option)):
        if not value:
            raise RecordProblem(f"column {name!r} is empty")
    value_column = columns.count if columns.count is not None else columns.share
    assert value_column is not None  # CsvColumns checks it
    value = _number(cells[value_column], value_column)
    if value < 0:
        raise RecordProblem(f"column {value_column!r}: {cells[value_column]!r} is negative")
    ordinal_cell = optional(columns.ordinal)
    ordinal = None if ordinal_cell is None else _number(ordinal_cell, str(columns.ordinal))
    tags_cell = optional(columns.tags)
    tags = () if tags_cell is None else tuple(sorted({t.strip() for t in tags_cell.split(TAG_SEPARATOR)} - {""}))

    block = blocks.get((group, qid))
    if block is None:
        block = _Block(line, group, qid, cells[columns.question], optional(columns.attribute), tags)
        blocks[(group, qid)] = block
    for what, first, now in (
        ("question text", block.text, cells[columns.question]),
        ("attribute", block.attribute, optional(columns.attribute)),
        ("tags", block.tags, tags),
    ):
        if now != first:
            raise RecordProblem(
                f"group {group!r}, question {qid!r}: {what} {now!r} differs from {first!r} on line {block.line}"
            )
    if option in block.values:
        raise RecordProblem(
            f"group {group!r}, question {qid!r}: option {option!r} again (first on line {block.option_lines[option]})"
        )
    block.values[option], block.ordinals[option], block.option_lines[option] = value, ordinal, line


def _number(cell: str, column: str) -> float:
    try:
        x = float(cell)
    except ValueError:
        raise RecordProblem(f"column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(x):
        raise RecordProblem(f"column {column!r}: {cell!r} is not a finite number")
    return x


def _collect(path: Path, blocks: Mapping[tuple[str, str], _Block], value_field: str) -> PreferenceDataset:
    """Every block as a record of the JSONL format, checked by the reader's rules in order of first appearance."""
    collector = AnswerCollector()
    first_of: dict[str, _Block] = {}  # question id -> its first block: its options, in their order
    for block in blocks.values():
        first = first_of.setdefault(block.qid, block)
        options = list(first.values)
        try:
            if set(block.values) != set(options):
                raise RecordProblem(
                    f"question {block.qid!r}: group {block.group!r} gives options {list(block.values)} but group "
                    f"{first.group!r} (line {first.line}) gave {options}; every group lists the same options "
                    "(a row with count or share 0 for an option nobody in the group chose)"
                )
            ordinals = [block.ordinals[o] for o in options]
            if any(x is None for x in ordinals) and not all(x is None for x in ordinals):
                raise RecordProblem(
                    f"group {block.group!r}, question {block.qid!r}: ordinals given for some options only"
                )
            obj: dict[str, Any] = {
                "group": block.group,
                "question_id": block.qid,
                "question": block.text,
                "options": options,
                value_field: [block.values[o] for o in options],
                "ordinals": None if ordinals[0] is None else ordinals,
                "attribute": block.attribute,
                "tags": list(block.tags),
            }
            collector.add(block.line, obj)
        except RecordProblem as e:
            raise DatasetError(path, block.line, str(e)) from None
    if not blocks:
        raise DatasetError(path, None, "no data rows")
    return collector.dataset()


# ---------------------------------------------------------------------------------------------- JSONL


def parse_field_map(pairs: Sequence[str]) -> dict[str, str]:
    """`["group=country", ...]` (our field = their key) as {our field: their key}; ValueError on a bad pair."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours or not theirs:
            raise ValueError(f"--map {pair!r}: expected FIELD=KEY (our field = the key in your file)")
        if ours not in FIELDS:
            raise ValueError(f"--map {pair!r}: {ours!r} is not a field of the format; fields: {list(FIELDS)}")
        if ours in mapping:
            raise ValueError(f"--map {pair!r}: {ours!r} is mapped twice")
        if theirs in mapping.values():
            raise ValueError(f"--map {pair!r}: the key {theirs!r} is mapped twice")
        mapping[ours] = theirs
    return mapping


def read_mapped_jsonl(
    path: str | os.PathLike[str], mapping: Mapping[str, str], ignore_extra: bool = False
) -> PreferenceDataset:
    """The dataset of a JSONL(.gz) whose keys are renamed to our fields by `mapping` ({our field: their key}; a field
    not in it keeps its name). A key that is no field (after mapping) is refused, or dropped with `ignore_extra`."""
    collector = AnswerCollector()
    keys = {ours: mapping.get(ours, ours) for ours in FIELDS}

    def add(lineno: int, obj: dict[str, Any]) -> None:
        extra = sorted(set(obj) - set(keys.values()))
        if extra and not ignore_extra:
            raise RecordProblem(
                f"unknown key(s) {extra}: map them to fields with --map FIELD=KEY, or drop them with --ignore-extra; "
                f"fields: {list(FIELDS)}"
            )
        for ours in REQUIRED_FIELDS:
            if keys[ours] != ours and obj.get(keys[ours]) is None:
                raise RecordProblem(f"missing key {keys[ours]!r} (mapped to the field {ours!r})")
        collector.add(lineno, {ours: obj[theirs] for ours, theirs in keys.items() if theirs in obj})

    read_records(Path(path), add)
    return collector.dataset()
