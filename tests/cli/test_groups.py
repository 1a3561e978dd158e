"""`gpo train` / `gpo eval` on a dataset that cannot train stop at the check, before the embedder is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import service.cli.groups as groups_cli
from service.cli import app
from service.training.datasets import PreferenceDataset, Question
from service.training.jsonl import write_jsonl
from tests.cli.test_data import CSV_ARGS, complete_csv


class Embedded(Exception):
    """Raised by the stand-in for the embedding step: the command got past the check."""


@pytest.fixture(autouse=True)
def no_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    def embed(ds):
        raise Embedded

    monkeypatch.setattr(groups_cli, "embed_group_dataset", embed)
    monkeypatch.setattr(groups_cli, "set_up_logging_and_threads", lambda threads: None)


def dataset(tmp_path: Path, n_groups: int, n_questions: int) -> Path:
    out = tmp_path / f"d{n_groups}x{n_questions}.jsonl"
    result = CliRunner().invoke(
        app, ["import", "csv", str(complete_csv(tmp_path / "t.csv", n_groups, n_questions)), str(out), *CSV_ARGS]
    )
    assert result.exit_code == 0, result.output
    return out


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_refuses_a_dataset_that_cannot_train(tmp_path: Path) -> None:
    result = invoke("train", "--data", dataset(tmp_path, 2, 25))
    assert result.exit_code == 1, result.output
    assert "the dataset cannot train (nothing embedded)" in result.stderr
    assert "error: 2 group(s): training needs at least 3" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_train_checks_the_groups_left_after_exclusion(tmp_path: Path) -> None:
    data = dataset(tmp_path, 3, 25)
    result = invoke("train", "--data", data)
    assert isinstance(result.exception, Embedded)  # a good dataset reaches the embedding step
    result = invoke("train", "--data", data, "--exclude-group", "G0")
    assert result.exit_code == 1 and "error: 2 group(s)" in result.stderr


def test_train_without_prior_needs_no_shared_questions(tmp_path: Path) -> None:
    """Three groups, each answering 22 questions of its own: no question can have a prior."""
    qs = [Question(f"q{j}", f"Question {j}?", ("a", "b")) for j in range(66)]
    dists = {f"G{i}": {f"q{j}": np.array([0.5, 0.5]) for j in range(22 * i, 22 * i + 22)} for i in range(3)}
    data = tmp_path / "disjoint.jsonl"
    write_jsonl(PreferenceDataset(questions=qs, groups=list(dists), dists=dists), data)
    result = invoke("train", "--data", data)
    assert result.exit_code == 1 and "error: no question was answered by 3 or more groups" in result.stderr
    assert isinstance(invoke("train", "--data", data, "--no-use-prior").exception, Embedded)


def test_eval_refuses_before_embedding(tmp_path: Path) -> None:
    data = dataset(tmp_path, 4, 22)
    result = invoke("eval", "--data", data, "--splits", "0.6", "--no-lm")
    assert isinstance(result.exception, Embedded)
    result = invoke("eval", "--data", data, "--splits", "0.4,0.6", "--no-lm")
    assert result.exit_code == 1
    assert "error: split 0.4 of 4 groups gives 1 training group(s) and 3 test group(s)" in result.stderr
    result = invoke("eval", "--data", data, "--splits", "0.6", "--n-context", "25", "--no-lm")
    assert result.exit_code == 1 and "error: no group answered 26 or more scorable questions" in result.stderr
