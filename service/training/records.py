"""Record I/O shared by the JSONL dataset formats: read plain or gzip lines strictly, check fields, write atomically.

Both formats (`jsonl.py`: group answer distributions, `ratings.py`: per-person ratings) are one JSON object per
line. A format module checks one decoded object and raises `RecordProblem`; `read_records` turns that into a
`DatasetError` naming the file and the 1-based line, so every format reports problems the same way.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A malformed dataset file: the message names the file, the 1-based line (when known) and the problem."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class RecordProblem(Exception):
    """Raised while checking one record; turned into a DatasetError that knows the file and line."""


# ---------------------------------------------------------------------------------------------- reading


@contextmanager
def open_binary(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, gunzipped when it starts with the gzip magic bytes."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if gz:
            with gzip.GzipFile(fileobj=raw, mode="rb") as z:
                yield z
        else:
            yield raw


def read_records(path: Path, handle: Callable[[int, dict[str, Any]], None]) -> None:
    """Call `handle(line number, object)` on every non-blank line of a `.jsonl` or `.jsonl.gz` file, in order.

    Blank lines are skipped (they still count for line numbers). A `RecordProblem` raised by `handle`, a line that
    is not UTF-8 or not one JSON object, and a corrupt or truncated gzip stream become a `DatasetError` naming the
    line; a missing file is a `FileNotFoundError`.
    """
    lineno = 0
    with open_binary(path) as f:
        try:
            for lineno, raw_bytes in enumerate(f, start=1):
                try:
                    raw = raw_bytes.decode("utf-8")  # per line, so a bad byte is reported on its own line
                except UnicodeDecodeError as e:
                    raise DatasetError(path, lineno, f"not UTF-8 ({e.reason} at byte {e.start})") from None
                if not raw.strip():
                    continue
                try:
                    handle(lineno, decode_line(raw))
                except RecordProblem as e:
                    raise DatasetError(path, lineno, str(e)) from None
        except (OSError, EOFError, zlib.error) as e:
            # A corrupt or truncated gzip stream surfaces while reading the next line.
            raise DatasetError(path, lineno + 1, f"unreadable ({type(e).__name__}: {e})") from e


def _reject_constant(name: str) -> Any:
    raise RecordProblem(f"non-finite number {name} (NaN and Infinity are not allowed)")


def decode_line(raw: str) -> dict[str, Any]:
    """One line as a JSON object; NaN and Infinity are refused (they are not JSON)."""
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise RecordProblem(f"bad JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise RecordProblem(f"expected a JSON object, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------------------------- field checks


def check_field_names(obj: Mapping[str, Any], required: Sequence[str], optional: Sequence[str]) -> None:
    """Refuse a field the format does not know, and a required field that is missing or null."""
    known = frozenset((*required, *optional))
    unknown = sorted(set(obj) - known)
    if unknown:
        raise RecordProblem(f"unknown field(s) {unknown}; allowed: {sorted(known)}")
    for name in required:
        if name not in obj or obj[name] is None:
            raise RecordProblem(f"missing field {name!r}")


def nonempty_str(obj: Mapping[str, Any], name: str) -> str:
    """The field `name` of `obj`, which must be a non-empty string."""
    value = obj[name]
    if not isinstance(value, str) or not value:
        raise RecordProblem(f"field {name!r} must be a non-empty string, got {value!r}")
    return value


def is_number(v: Any) -> bool:
    """A JSON number: int or float, but not a bool (which Python counts as an int)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------- writing


def compact_number(x: float) -> int | float:
    """`x` as written in a file: an int when it is a whole number (3, not 3.0), else the float."""
    x = float(x)
    return int(x) if math.isfinite(x) and x.is_integer() else x


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """One record as a compact UTF-8 JSON line (refusing NaN and Infinity, as reading does)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n"


def write_records(path: Path, write_lines: Callable[[IO[bytes]], None]) -> None:
    """Atomically write what `write_lines(out)` writes to `path`, gzipped when the name ends in `.gz`.

    The data goes to a temporary file in the same folder that replaces `path` only when complete; on any error
    nothing is left behind and an existing `path` is untouched.
    """
    with _atomic_binary(path) as raw:
        if path.name.endswith(".gz"):
            # filename="" keeps the temporary name out of the header; mtime=0 keeps the bytes reproducible.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as z:
                write_lines(z)
        else:
            write_lines(raw)


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON at `path` (numpy numbers as floats), written atomically like `write_records`: a reader,
    or a run interrupted mid-write, finds the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(obj, indent=1, default=float).encode("utf-8")
    write_records(path, lambda out: out.write(data))


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
