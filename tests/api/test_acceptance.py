"""Issue 3 acceptance through HTTP, on the real SmolLM2 and real OpinionQA data: a group left out of the
checkpoint's training, registered with 20 context questions, is predicted better than uniform and than the
mean of the other groups on all its other questions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.config import PROJECT_ROOT, Settings
from service.training.baselines import predict_many
from service.training.evaluate import score
from service.training.opinionqa import load_opinionqa
from service.training.splits import scorable_question_ids

from .conftest import authed_client

LEFT_OUT = "Asian"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def left_out_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint meta-trained on the 16 other groups (SmolLM2 embeddings from the shared disk cache)."""
    store = tmp_path_factory.mktemp("left-out-store")
    env = {**os.environ, "GPO_MODEL_STORE": str(store), "GPO_CACHE_DIR": str(PROJECT_ROOT / ".cache")}
    cmd = [sys.executable, "-m", "service.cli", "train", "--exclude-group", LEFT_OUT, "--name", "left-out"]
    cmd += ["--max-steps", "300", "--threads", "2", "--time-budget-s", "1700", "--strict"]  # embedding counts too
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return store


def test_left_out_group_is_predicted_better_than_uniform_and_the_other_groups_mean(left_out_store, tmp_path):
    ds = load_opinionqa()
    qids = scorable_question_ids(ds)
    rng = np.random.default_rng(0)
    context = [str(q) for q in rng.choice(qids, size=20, replace=False)]
    targets = [q for q in qids if q not in set(context)]
    settings = Settings(
        model_store=left_out_store,
        checkpoint="left-out",
        database_url=f"sqlite:///{tmp_path / 'gpo.sqlite3'}",
        cache_dir=PROJECT_ROOT / ".cache",
        redis_url=None,
        worker_url=None,
    )
    with authed_client(settings) as client:
        items = []
        for qid in context:
            q = ds.question(qid)
            items.append(
                {
                    "question": q.text,
                    "options": list(q.options),
                    "distribution": ds.dist(LEFT_OUT, qid).tolist(),
                    "ordinals": list(q.ordinals),
                }
            )
        r = client.post(f"/groups/{LEFT_OUT}/context", json={"mode": "replace", "items": items})
        assert r.status_code == 200, r.text
        assert r.json()["size"] == 20

        predicted: dict[str, np.ndarray] = {}
        for start in range(0, len(targets), 200):
            chunk = targets[start : start + 200]
            questions = [{"question": ds.question(q).text, "options": list(ds.question(q).options)} for q in chunk]
            r = client.post("/predict", json={"group_id": LEFT_OUT, "questions": questions})
            assert r.status_code == 200, r.text
            for qid, p in zip(chunk, r.json()["predictions"], strict=True):
                predicted[qid] = np.asarray(p["distribution"])

    others = [g for g in ds.groups if g != LEFT_OUT]
    gpo = float(np.mean(score(ds, LEFT_OUT, predicted, targets)))
    uniform = predict_many("uniform", ds, others, [{}], targets)[0]
    train_mean = predict_many("train_mean", ds, others, [{}], targets)[0]
    s_uniform = float(np.mean(score(ds, LEFT_OUT, uniform, targets)))
    s_mean = float(np.mean(score(ds, LEFT_OUT, train_mean, targets)))
    print(f"left-out group {LEFT_OUT}: GPO {gpo:.4f}, mean of other groups {s_mean:.4f}, uniform {s_uniform:.4f}")
    assert gpo > s_mean > s_uniform
