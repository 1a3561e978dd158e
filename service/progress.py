"""Progress bars with an ETA on stderr for the long offline steps (embedding, training, evaluation)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, *, unit: str = "it", enabled: bool = True, leave: bool = True) -> tqdm:
    """A tqdm bar (count, rate, ETA) on stderr, beside the log lines, which it leaves as they are.

    Off when `enabled` is false, when stderr is not a terminal (a log file or a pipe gets no bar lines), or with
    the environment variable TQDM_DISABLE=1 (tqdm's own setting).
    """
    if not (enabled and sys.stderr.isatty()):
        return tqdm(total=total, desc=desc, unit=unit, disable=True)
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True)
