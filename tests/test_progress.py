"""Progress bars: on a terminal only, and off on request."""

from __future__ import annotations

import io

import pytest

from service.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_with_an_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    with progress_bar(4, "embedding", unit="text") as bar:
        assert not bar.disable
        bar.update(2)
    assert "embedding" in err.getvalue() and "2/4" in err.getvalue() and "<" in err.getvalue()  # elapsed<remaining


def test_no_bar_off_a_terminal_or_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or a log file
    assert progress_bar(4, "x").disable
    monkeypatch.setattr("sys.stderr", Terminal())
    assert progress_bar(4, "x", enabled=False).disable
