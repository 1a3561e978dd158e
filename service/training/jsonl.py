"""JSONL group answer distributions: read and atomically write one line per (group, question).

The format is documented in `service/data/FORMAT.md`. In short, every line is a JSON object

    {"group": "Democrat", "attribute": "POLPARTY", "question_id": "GUNKILLF2_W26",
     "question": "...", "options": ["A", "B"], "ordinals": [1, 2], "tags": ["contentious"],
     "distribution": [0.25, 0.75]}            # or "counts": [10, 30] instead of "distribution"

and a file is a whole `PreferenceDataset`: groups and questions in order of first appearance.
Every problem is reported as a `DatasetError` (service/training/records.py) naming the file and the 1-based line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.training.datasets import PreferenceDataset, Question
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

# How far a given "distribution" may sum from 1 before it is refused; within it, it is renormalised
# by its sum, unless it is already within EXACT_TOLERANCE of 1 (rounding only), when it is kept as is.
SUM_TOLERANCE = 1e-3
EXACT_TOLERANCE = 1e-9

REQUIRED_FIELDS = ("group", "question_id", "question", "options")
OPTIONAL_FIELDS = ("distribution", "counts", "ordinals", "attribute", "tags")


@dataclass(frozen=True)
class _Record:
    group: str
    attribute: str | None
    question: Question
    dist: np.ndarray  # [n_options], sums to 1


# ---------------------------------------------------------------------------------------------- reading


def read_jsonl(path: str | os.PathLike[str]) -> PreferenceDataset:
    """Read a `.jsonl` or `.jsonl.gz` file (gzip is recognised by its magic bytes) into a dataset.

    Blank lines are skipped (they still count for line numbers). Raises `DatasetError` on any malformed
    line, and `FileNotFoundError` when the file does not exist.
    """
    collector = AnswerCollector()
    read_records(Path(path), collector.add)
    return collector.dataset()


class AnswerCollector:
    """Gathers (group, question) records, each checked alone and against the ones before it, into a dataset.

    `read_jsonl` feeds it a file's lines; importers of other layouts (`tabular.py`) feed it objects in this
    format, so every source is held to the same rules. `add` raises `RecordProblem`; the caller knows where.
    """

    def __init__(self) -> None:
        self.questions: dict[str, tuple[Question, int]] = {}  # qid -> (question, line first defined)
        self.group_lines: dict[str, int] = {}  # group -> line of first appearance
        self.attributes: dict[str, tuple[str, int]] = {}  # group -> (attribute, line first given)
        self.dists: dict[str, dict[str, np.ndarray]] = {}
        self.seen: dict[tuple[str, str], int] = {}  # (group, qid) -> line

    def add(self, lineno: int, obj: Mapping[str, Any]) -> None:
        """Check one object in the group-answers format and register it (`lineno`: where it came from)."""
        rec = _parse_record(obj)
        _merge(rec, lineno, self.questions, self.group_lines, self.attributes, self.seen)
        self.dists.setdefault(rec.group, {})[rec.question.qid] = rec.dist

    def dataset(self) -> PreferenceDataset:
        """The records so far: groups and questions in order of first appearance."""
        return PreferenceDataset(
            questions=[q for q, _ in self.questions.values()],
            groups=list(self.group_lines),
            dists=self.dists,
            group_attributes={g: a for g, (a, _) in self.attributes.items()},
        )


def _parse_record(obj: Mapping[str, Any]) -> _Record:
    """Check one decoded line and build its record; raises `RecordProblem` describing the first problem."""
    check_field_names(obj, REQUIRED_FIELDS, OPTIONAL_FIELDS)
    group = nonempty_str(obj, "group")
    qid = nonempty_str(obj, "question_id")
    text = obj["question"]
    if not isinstance(text, str):
        raise RecordProblem(f"field 'question' must be a string, got {type(text).__name__}")

    options = obj["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise RecordProblem("field 'options' must be a list of strings")
    if not options:
        raise RecordProblem("field 'options' is empty")
    dup = sorted({o for o in options if options.count(o) > 1})
    if dup:
        raise RecordProblem(f"duplicate options {dup}")
    n = len(options)

    has_dist = obj.get("distribution") is not None
    has_counts = obj.get("counts") is not None
    if has_dist == has_counts:
        raise RecordProblem(
            "exactly one of 'distribution' or 'counts' must be given"
            if has_dist
            else "missing field 'distribution' (or 'counts')"
        )
    if has_dist:
        values = _numbers(obj, "distribution", n, nonnegative=True)
        total = float(values.sum())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise RecordProblem(f"distribution sums to {total:.6g}, not 1 (tolerance {SUM_TOLERANCE})")
        if abs(total - 1.0) <= EXACT_TOLERANCE:
            total = 1.0  # rounding only: keep the values as written, so a write/read round trip is exact
    else:
        values = _numbers(obj, "counts", n, nonnegative=True)
        total = float(values.sum())
        if total <= 0:
            raise RecordProblem("counts are all zero")
    dist = values / total

    ordinals = None
    if obj.get("ordinals") is not None:
        ordinals = tuple(float(x) for x in _numbers(obj, "ordinals", n, nonnegative=False))

    attribute = obj.get("attribute")
    if attribute is not None:
        attribute = nonempty_str(obj, "attribute")

    tags = obj.get("tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise RecordProblem("field 'tags' must be a list of non-empty strings")

    question = Question(qid=qid, text=text, options=tuple(options), ordinals=ordinals, tags=frozenset(tags))
    return _Record(group=group, attribute=attribute, question=question, dist=dist)


def _numbers(obj: Mapping[str, Any], name: str, n: int, *, nonnegative: bool) -> np.ndarray:
    values = obj[name]
    if not isinstance(values, list) or not all(is_number(v) for v in values):
        raise RecordProblem(f"field {name!r} must be a list of numbers")
    if len(values) != n:
        raise RecordProblem(f"field {name!r} has {len(values)} values but there are {n} options")
    arr = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise RecordProblem(f"field {name!r} has a non-finite value")
    if nonnegative and np.any(arr < 0):
        raise RecordProblem(f"field {name!r} has a negative value")
    return arr


def _merge(
    rec: _Record,
    lineno: int,
    questions: dict[str, tuple[Question, int]],
    group_lines: dict[str, int],
    attributes: dict[str, tuple[str, int]],
    seen: dict[tuple[str, str], int],
) -> None:
    """Check a record against the lines before it and register it."""
    q = rec.question
    key = (rec.group, q.qid)
    if key in seen:
        raise RecordProblem(
            f"duplicate line for group {rec.group!r} and question {q.qid!r} (first on line {seen[key]})"
        )
    if q.qid in questions:
        first, first_line = questions[q.qid]
        for name in ("text", "options", "ordinals", "tags"):
            if getattr(first, name) != getattr(q, name):
                shown = "question" if name == "text" else name
                raise RecordProblem(f"question {q.qid!r}: {shown!r} differs from line {first_line}")
    else:
        questions[q.qid] = (q, lineno)
    if rec.attribute is not None:
        if rec.group in attributes and attributes[rec.group][0] != rec.attribute:
            a, first_line = attributes[rec.group]
            raise RecordProblem(
                f"group {rec.group!r}: attribute {rec.attribute!r} differs from {a!r} on line {first_line}"
            )
        attributes.setdefault(rec.group, (rec.attribute, lineno))
    group_lines.setdefault(rec.group, lineno)
    seen[key] = lineno


# ---------------------------------------------------------------------------------------------- writing


def write_jsonl(
    dataset: PreferenceDataset,
    path: str | os.PathLike[str],
    group_attributes: Mapping[str, str] | None = None,
) -> None:
    """Write `dataset` to `path` (gzip when the name ends in `.gz`, with mtime 0 so output is deterministic).

    Lines are group-major: for each group of `dataset.groups`, its answered questions in dataset order,
    so reading the file back gives the same group order, and the same question order whenever the
    first group answers every question (otherwise questions follow first appearance). `group_attributes`
    (default: `dataset.group_attributes`) fills the optional "attribute" field; keys for groups not in
    the dataset are ignored. A group or question without any answer cannot be represented and is an
    error. Every line is checked exactly as `read_jsonl` would check it before it is written.

    Atomic: the data goes to a temporary file in the same folder that replaces `path` only when
    complete; on any error nothing is left behind and an existing `path` is untouched.
    """
    path = Path(path)
    attrs = dict(dataset.group_attributes if group_attributes is None else group_attributes)
    answered = {q.qid for g in dataset.groups for q in dataset.questions if dataset.has(g, q.qid)}
    unanswered = [q.qid for q in dataset.questions if q.qid not in answered]
    if unanswered:
        problem = f"questions without any group answer cannot be written: {unanswered[:5]}"
        raise DatasetError(path, None, problem)
    silent = [g for g in dataset.groups if not any(dataset.has(g, q.qid) for q in dataset.questions)]
    if silent:
        raise DatasetError(path, None, f"groups without any answer cannot be written: {silent[:5]}")

    write_records(path, lambda out: _write_lines(dataset, attrs, path, out))


def _write_lines(dataset: PreferenceDataset, attrs: Mapping[str, str], path: Path, out: IO[bytes]) -> None:
    lineno = 0
    for g in dataset.groups:
        for q in dataset.questions:
            if not dataset.has(g, q.qid):
                continue
            lineno += 1
            obj = _record_object(g, attrs.get(g), q, dataset.dist(g, q.qid))
            try:
                _parse_record(obj)
            except RecordProblem as e:
                raise DatasetError(path, lineno, f"group {g!r}, question {q.qid!r}: {e}") from None
            out.write(encode_line(obj))


def _record_object(group: str, attribute: str | None, q: Question, dist: np.ndarray) -> dict[str, Any]:
    obj: dict[str, Any] = {"group": group}
    if attribute is not None:
        obj["attribute"] = attribute
    obj["question_id"] = q.qid
    obj["question"] = q.text
    obj["options"] = list(q.options)
    if q.ordinals is not None:
        obj["ordinals"] = [compact_number(x) for x in q.ordinals]
    if q.tags:
        obj["tags"] = sorted(q.tags)
    values = np.asarray(dist, dtype=np.float64).ravel()
    obj["distribution"] = [float(x) for x in values]  # repr of a float round-trips exactly through JSON
    return obj
