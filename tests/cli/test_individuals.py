"""`gpo eval-individuals` / `gpo train-individuals` refuse a bad `--prior-mean` before anything is embedded."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import service.cli.individuals as individuals_cli
from service.cli import app


@pytest.mark.parametrize("command", ["eval-individuals", "train-individuals"])
def test_an_unknown_prior_mean_is_refused_before_embedding(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    def embed(*args, **kwargs):
        raise AssertionError("embedded before checking --prior-mean")

    monkeypatch.setattr(individuals_cli, "load_and_embed_ratings", embed)
    monkeypatch.setattr(individuals_cli, "set_up_logging_and_threads", lambda threads: None)
    result = CliRunner().invoke(app, [command, "--prior-mean", "bogus"])
    assert result.exit_code == 2, result.output
    assert "--prior-mean must be one of auto, shrunk, reward, items" in result.output
