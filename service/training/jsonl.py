"""JSONL group answer distributions: read and atomically write one line per (group, question).

The format is documented in `service/data/FORMAT.md`. In short, every line is a JSON object

    {"group": "Democrat", "attribute": "POLPARTY", "question_id": "GUNKILLF2_W26",
     "question": "...", "options": ["A", "B"], "ordinals": [1, 2], "tags": ["contentious"],
     "distribution": [0.25, 0.75]}            # or "counts": [10, 30] instead of "distribution"

and a file is a whole `PreferenceDataset`: groups and questions in order of first appearance.
Every problem is reported as a `DatasetError` naming the file and the 1-based line.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.training.datasets import PreferenceDataset, Question

# How far a given "distribution" may sum from 1 before it is refused; within it, it is renormalised
# by its sum, unless it is already within EXACT_TOLERANCE of 1 (rounding only), when it is kept as is.
SUM_TOLERANCE = 1e-3
EXACT_TOLERANCE = 1e-9

REQUIRED_FIELDS = ("group", "question_id", "question", "options")
OPTIONAL_FIELDS = ("distribution", "counts", "ordinals", "attribute", "tags")
_KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A malformed dataset file: the message names the file, the 1-based line (when known) and the problem."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class _Problem(Exception):
    """Raised while checking one record; turned into a DatasetError that knows the file and line."""


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
    path = Path(path)
    questions: dict[str, tuple[Question, int]] = {}  # qid -> (question, line first defined)
    group_lines: dict[str, int] = {}  # group -> line of first appearance
    attributes: dict[str, tuple[str, int]] = {}  # group -> (attribute, line first given)
    dists: dict[str, dict[str, np.ndarray]] = {}
    seen: dict[tuple[str, str], int] = {}  # (group, qid) -> line

    lineno = 0
    with _open_binary(path) as f:
        try:
            for lineno, raw_bytes in enumerate(f, start=1):
                try:
                    raw = raw_bytes.decode("utf-8")  # per line, so a bad byte is reported on its own line
                except UnicodeDecodeError as e:
                    raise DatasetError(path, lineno, f"not UTF-8 ({e.reason} at byte {e.start})") from None
                if not raw.strip():
                    continue
                try:
                    rec = _parse_record(_decode_line(raw))
                    _merge(rec, lineno, questions, group_lines, attributes, seen)
                except _Problem as e:
                    raise DatasetError(path, lineno, str(e)) from None
                dists.setdefault(rec.group, {})[rec.question.qid] = rec.dist
        except (OSError, EOFError, zlib.error) as e:
            # A corrupt or truncated gzip stream surfaces while reading the next line.
            raise DatasetError(path, lineno + 1, f"unreadable ({type(e).__name__}: {e})") from e

    return PreferenceDataset(
        questions=[q for q, _ in questions.values()],
        groups=list(group_lines),
        dists=dists,
        group_attributes={g: a for g, (a, _) in attributes.items()},
    )


@contextmanager
def _open_binary(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, gunzipped when it starts with the gzip magic bytes."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if gz:
            with gzip.GzipFile(fileobj=raw, mode="rb") as z:
                yield z
        else:
            yield raw


def _reject_constant(name: str) -> Any:
    raise _Problem(f"non-finite number {name} (NaN and Infinity are not allowed)")


def _decode_line(raw: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise _Problem(f"bad JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise _Problem(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _parse_record(obj: Mapping[str, Any]) -> _Record:
    """Check one decoded line and build its record; raises `_Problem` describing the first problem."""
    unknown = sorted(set(obj) - _KNOWN_FIELDS)
    if unknown:
        raise _Problem(f"unknown field(s) {unknown}; allowed: {sorted(_KNOWN_FIELDS)}")
    for name in REQUIRED_FIELDS:
        if name not in obj or obj[name] is None:
            raise _Problem(f"missing field {name!r}")

    group = _nonempty_str(obj, "group")
    qid = _nonempty_str(obj, "question_id")
    text = obj["question"]
    if not isinstance(text, str):
        raise _Problem(f"field 'question' must be a string, got {type(text).__name__}")

    options = obj["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise _Problem("field 'options' must be a list of strings")
    if not options:
        raise _Problem("field 'options' is empty")
    dup = sorted({o for o in options if options.count(o) > 1})
    if dup:
        raise _Problem(f"duplicate options {dup}")
    n = len(options)

    has_dist = obj.get("distribution") is not None
    has_counts = obj.get("counts") is not None
    if has_dist == has_counts:
        raise _Problem("exactly one of 'distribution' or 'counts' must be given" if has_dist
                       else "missing field 'distribution' (or 'counts')")
    if has_dist:
        values = _numbers(obj, "distribution", n, nonnegative=True)
        total = float(values.sum())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise _Problem(f"distribution sums to {total:.6g}, not 1 (tolerance {SUM_TOLERANCE})")
        if abs(total - 1.0) <= EXACT_TOLERANCE:
            total = 1.0  # rounding only: keep the values as written, so a write/read round trip is exact
    else:
        values = _numbers(obj, "counts", n, nonnegative=True)
        total = float(values.sum())
        if total <= 0:
            raise _Problem("counts are all zero")
    dist = values / total

    ordinals = None
    if obj.get("ordinals") is not None:
        ordinals = tuple(float(x) for x in _numbers(obj, "ordinals", n, nonnegative=False))

    attribute = obj.get("attribute")
    if attribute is not None:
        attribute = _nonempty_str(obj, "attribute")

    tags = obj.get("tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise _Problem("field 'tags' must be a list of non-empty strings")

    question = Question(qid=qid, text=text, options=tuple(options), ordinals=ordinals, tags=frozenset(tags))
    return _Record(group=group, attribute=attribute, question=question, dist=dist)


def _nonempty_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value:
        raise _Problem(f"field {name!r} must be a non-empty string, got {value!r}")
    return value


def _numbers(obj: Mapping[str, Any], name: str, n: int, *, nonnegative: bool) -> np.ndarray:
    values = obj[name]
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise _Problem(f"field {name!r} must be a list of numbers")
    if len(values) != n:
        raise _Problem(f"field {name!r} has {len(values)} values but there are {n} options")
    arr = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise _Problem(f"field {name!r} has a non-finite value")
    if nonnegative and np.any(arr < 0):
        raise _Problem(f"field {name!r} has a negative value")
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
        raise _Problem(
            f"duplicate line for group {rec.group!r} and question {q.qid!r} (first on line {seen[key]})"
        )
    if q.qid in questions:
        first, first_line = questions[q.qid]
        for name in ("text", "options", "ordinals", "tags"):
            if getattr(first, name) != getattr(q, name):
                shown = "question" if name == "text" else name
                raise _Problem(f"question {q.qid!r}: {shown!r} differs from line {first_line}")
    else:
        questions[q.qid] = (q, lineno)
    if rec.attribute is not None:
        if rec.group in attributes and attributes[rec.group][0] != rec.attribute:
            a, first_line = attributes[rec.group]
            raise _Problem(
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

    with _atomic_binary(path) as raw:
        if path.name.endswith(".gz"):
            # filename="" keeps the temporary name out of the header; mtime=0 keeps the bytes reproducible.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as z:
                _write_lines(dataset, attrs, path, z)
        else:
            _write_lines(dataset, attrs, path, raw)


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
            except _Problem as e:
                raise DatasetError(path, lineno, f"group {g!r}, question {q.qid!r}: {e}") from None
            line = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            out.write(line.encode("utf-8") + b"\n")


def _record_object(group: str, attribute: str | None, q: Question, dist: np.ndarray) -> dict[str, Any]:
    obj: dict[str, Any] = {"group": group}
    if attribute is not None:
        obj["attribute"] = attribute
    obj["question_id"] = q.qid
    obj["question"] = q.text
    obj["options"] = list(q.options)
    if q.ordinals is not None:
        obj["ordinals"] = [_compact(x) for x in q.ordinals]
    if q.tags:
        obj["tags"] = sorted(q.tags)
    values = np.asarray(dist, dtype=np.float64).ravel()
    obj["distribution"] = [float(x) for x in values]  # repr of a float round-trips exactly through JSON
    return obj


def _compact(x: float) -> int | float:
    x = float(x)
    return int(x) if math.isfinite(x) and x.is_integer() else x


@contextmanager
def _atomic_binary(path: Path) -> Iterator[IO[bytes]]:
    """Yield a temporary file next to `path`; os.replace it onto `path` on success, delete it on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; a data file should be readable like any other (keep an existing file's mode).
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
