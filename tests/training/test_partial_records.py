"""Evaluation records are saved as each seed (or split and seed) finishes: an interrupted run keeps them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import service.training.individuals.evaluate as individual_evaluation
from service.cli import app
from service.config import get_settings


class Interrupted(KeyboardInterrupt):
    pass


@pytest.fixture
def tiny_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_lm_path: Path):
    monkeypatch.setenv("GPO_EMBEDDER", str(tiny_lm_path))
    monkeypatch.setenv("GPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPO_MODEL_STORE", str(tmp_path / "store"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_eval_individuals_writes_each_seed_as_it_finishes_and_append_completes_it(
    tiny_settings, small_ratings_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "individuals.json"
    args = [
        "eval-individuals",
        "--data",
        str(small_ratings_file),
        "--json",
        str(out),
        "--n-context",
        "1,2",
        "--main-context",
        "2",
        "--no-comparison",
        "--max-steps",
        "2",
        "--prior-rank",
        "3",
        "--threads",
        "1",
    ]
    real = individual_evaluation.train_individual_gpo
    calls: list[int] = []

    def train_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second seed's model: as Ctrl-C after the first seed
            raise Interrupted
        return real(*a, **k)

    monkeypatch.setattr(individual_evaluation, "train_individual_gpo", train_then_interrupt)
    result = CliRunner().invoke(app, [*args, "--seeds", "0,1"])
    assert result.exit_code != 0 and len(calls) == 2
    saved = json.loads(out.read_text())
    assert {r["seed"] for r in saved["records"]} == {0}  # the finished seed, every method and k
    assert {(r["method"], r["n_context"]) for r in saved["records"]} >= {("gpo", 1), ("gpo", 2), ("knn", 2)}
    assert saved["meta"]["complete"] is False and saved["meta"]["seeds_done"] == [0]
    assert list(tmp_path.glob(".individuals.json.*")) == []  # no temporary file left behind

    monkeypatch.setattr(individual_evaluation, "train_individual_gpo", real)
    result = CliRunner().invoke(app, [*args, "--seeds", "1", "--append"])
    assert result.exit_code == 0, result.output
    done = json.loads(out.read_text())
    assert {r["seed"] for r in done["records"]} == {0, 1}
    assert [r for r in done["records"] if r["seed"] == 0] == saved["records"]
    assert done["meta"]["complete"] is True
    assert set(done["meta"]["chosen"]) == {"0", "1"}
    assert "; then gpo " in done["meta"]["command"]


def test_gpo_eval_writes_each_split_and_seed_as_it_finishes(
    tiny_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.training.evaluate as group_evaluation
    from service.training.jsonl import write_jsonl
    from tests.training.test_fit import synthetic_dataset

    data = tmp_path / "groups.jsonl"
    write_jsonl(synthetic_dataset(n_groups=10, n_questions=30), data)
    out = tmp_path / "records.json"
    real = group_evaluation.train_gpo
    calls: list[int] = []

    def train_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return real(*a, **k)

    monkeypatch.setattr(group_evaluation, "train_gpo", train_then_interrupt)
    args = [
        "eval",
        "--data",
        str(data),
        "--json",
        str(out),
        "--splits",
        "0.6",
        "--seeds",
        "0,1",
        "--n-context",
        "5",
        "--no-curve",
        "--no-new-questions",
        "--no-lm",
        "--max-steps",
        "2",
        "--threads",
        "1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and len(calls) == 2
    records = json.loads(out.read_text())
    assert {r["seed"] for r in records} == {0} and "gpo" in {r["method"] for r in records}
    meta = json.loads((tmp_path / "records.meta.json").read_text())["meta"]
    assert meta["complete"] is False


def test_gpo_eval_runs_every_protocol_and_prints_the_new_question_and_new_context_tables(
    tiny_settings, tmp_path: Path
) -> None:
    from service.training.jsonl import write_jsonl
    from tests.training.test_fit import synthetic_dataset

    data = tmp_path / "groups.jsonl"
    write_jsonl(synthetic_dataset(n_groups=10, n_questions=60), data)
    out = tmp_path / "records.json"
    args = ["eval", "--data", str(data), "--json", str(out), "--splits", "0.6", "--seeds", "0", "--n-context", "5"]
    args += ["--no-curve", "--no-lm", "--max-steps", "2", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "## new questions" in result.output and "## new context" in result.output
    assert "| linear_probe | new_targets |" in result.output
    records = json.loads(out.read_text())
    assert {r["protocol"] for r in records} == {"groups", "new_questions", "new_context"}
    meta = json.loads((tmp_path / "records.meta.json").read_text())["meta"]
    assert meta["complete"] is True
