"""The wall-clock budget: counted from the command's start, said loudly when it cuts training short; --strict fails."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from service.gpo.features import FeatureSpec
from service.training.budget import Budget, TrainingStop
from service.training.fit import TrainConfig, train_gpo
from service.training.items import build_item_table
from service.training.jsonl import write_jsonl
from service.training.splits import scorable_question_ids
from tests.training.test_fit import synthetic_dataset

SMALL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}


def test_a_stop_is_too_short_only_when_the_budget_ended_it_early_or_kept_step_0() -> None:
    def stop(reason: str, steps: int, best: int) -> TrainingStop:
        return TrainingStop(steps, 1200, reason, best, setup_s=30.0, budget_s=600.0)

    assert stop("max_steps", 1200, 0).shortfall(100) is None  # validation chose step 0: not the budget's doing
    assert stop("patience", 300, 0).shortfall(100) is None
    assert stop("time_budget", 800, 700).shortfall(100) is None  # cut, but well trained: only the cut is said
    assert "800 of 1200 planned steps" in stop("time_budget", 800, 700).cut_message()
    assert "untrained one (step 0)" in stop("time_budget", 800, 0).shortfall(100)
    assert "fewer than the 100 steps" in stop("time_budget", 40, 40).shortfall(100)
    assert "fewer than the 10 steps" in TrainingStop(5, 10, "time_budget", 5, 1.0, 2.0).shortfall(100)
    assert stop("max_steps", 1200, 0).cut_message() is None


def _tiny_problem():
    ds = synthetic_dataset(n_groups=6, n_questions=30)
    n_items = sum(q.n_options for q in ds.questions)
    table = build_item_table(ds.questions, np.random.default_rng(0).normal(size=(n_items, 4)).astype(np.float32))
    return ds, table, table.qindex(scorable_question_ids(ds)), FeatureSpec(emb_dim=4, prior_rank=2)


def test_a_budget_spent_before_training_runs_no_step_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    ds, table, train_q, spec = _tiny_problem()
    cfg = TrainConfig(
        max_steps=6,
        batch_size=2,
        n_targets=5,
        min_context=3,
        max_context=8,
        eval_every=3,
        progress=False,
        time_budget_s=5.0,
    )
    spent = Budget(5.0, started=time.perf_counter() - 6.0)  # set-up took longer than the whole budget
    with caplog.at_level(logging.WARNING, logger="service.training.fit"):
        result = train_gpo(table, ds, ds.groups[:4], ds.groups[4:], train_q, spec, cfg, SMALL, budget=spent)
    assert result.steps_run == 0 and result.best_step == 0
    assert result.stop is not None and result.stop.reason == "time_budget"
    assert result.shortfall is not None and "untrained one (step 0)" in result.shortfall
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("0 of 6 planned steps ran" in w for w in warnings), warnings
    assert any("--time-budget-s" in w for w in warnings), warnings


def test_an_unlimited_budget_runs_every_step_and_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    ds, table, train_q, spec = _tiny_problem()
    cfg = TrainConfig(
        max_steps=6,
        batch_size=2,
        n_targets=5,
        min_context=3,
        max_context=8,
        eval_every=3,
        progress=False,
        time_budget_s=None,
    )
    with caplog.at_level(logging.WARNING, logger="service.training.fit"):
        result = train_gpo(table, ds, ds.groups[:4], ds.groups[4:], train_q, spec, cfg, SMALL)
    assert result.steps_run == 6 and result.stop.reason in ("max_steps", "patience")
    assert result.shortfall is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _env(tmp_path: Path, tiny_lm_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_CACHE_DIR": str(tmp_path / "cache"),
        "GPO_MODEL_STORE": str(tmp_path / "store"),
        "GPO_TORCH_THREADS": "1",
    }


def test_gpo_train_counts_set_up_in_the_budget_warns_and_fails_with_strict(tmp_path: Path, tiny_lm_path: Path):
    """0.2 s from the command's start is spent by set-up alone (imports, loading the LM, embedding)."""
    data = tmp_path / "data.jsonl"
    write_jsonl(synthetic_dataset(n_groups=6, n_questions=30), data)
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "train",
        "--data",
        str(data),
        "--name",
        "synth",
        "--max-steps",
        "20",
        "--time-budget-s",
        "0.2",
        "--threads",
        "1",
    ]
    strict = subprocess.run(
        [*cmd, "--strict"], env=_env(tmp_path, tiny_lm_path), capture_output=True, text=True, timeout=300
    )
    assert strict.returncode == 3, strict.stderr[-2000:]
    assert "WARNING" in strict.stderr and "0 of 20 planned steps ran" in strict.stderr
    assert "error (--strict)" in strict.stderr and "nothing saved" in strict.stderr
    assert not (tmp_path / "store" / "synth").exists()

    loose = subprocess.run(cmd, env=_env(tmp_path, tiny_lm_path), capture_output=True, text=True, timeout=300)
    assert loose.returncode == 0, loose.stderr[-2000:]
    assert "WARNING" in loose.stderr and "untrained one (step 0)" in loose.stderr
    (version,) = (tmp_path / "store" / "synth").glob("v*")
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["steps_run"] == 0 and metrics["stopped_by"] == "time_budget"
    assert "untrained" in metrics["shortfall"]


def test_gpo_train_individuals_strict_fails_when_the_budget_left_no_training(
    tmp_path: Path, tiny_lm_path: Path, small_ratings_file: Path
) -> None:
    data = small_ratings_file
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "train-individuals",
        "--data",
        str(data),
        "--name",
        "r",
        "--max-steps",
        "20",
        "--time-budget-s",
        "0.2",
        "--prior-rank",
        "3",
        "--threads",
        "1",
        "--strict",
    ]
    out = subprocess.run(cmd, env=_env(tmp_path, tiny_lm_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "WARNING" in out.stderr and "0 of 20 planned steps ran" in out.stderr
    assert not (tmp_path / "store" / "r").exists()


def test_the_loop_ends_within_the_budget_and_scores_its_last_steps(caplog: pytest.LogCaptureFixture) -> None:
    """Steps of 0.05 s and validations of 0.1 s in a 1 s budget: it stops early enough for the last validation."""
    from service.training.fit import meta_train_loop

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = TrainConfig(max_steps=1000, eval_every=5, patience=1000, warmup_steps=1, progress=False)
    steps: list[int] = []

    def batch_loss() -> torch.Tensor:
        time.sleep(0.05)
        steps.append(1)
        return model(torch.ones(1, 2)).sum()

    def validate() -> float:
        time.sleep(0.1)
        return float(len(steps))  # later is better: the last step validated is kept

    budget = Budget(1.0)
    with caplog.at_level(logging.WARNING, logger="service.training.fit"):
        loop = meta_train_loop(model, opt, cfg, batch_loss, validate, {}, budget)
    assert budget.elapsed() < 1.0 + 0.15  # jitter of a loaded machine, not a validation more
    assert loop.stop.reason == "time_budget" and 3 <= loop.steps_run < 1000
    assert loop.history[-1]["step"] == loop.steps_run == loop.best_step  # the steps since the last validation count
    assert any(f"{loop.steps_run} of 1000 planned steps ran" in r.getMessage() for r in caplog.records)
