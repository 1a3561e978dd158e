"""The shipped checkpoints serve the same predictions through HTTP as they did before the serving package was
reorganised: /predict for each kind (choice, rating, comparison) and an inline-context /predict, on the real
SmolLM2, compared to the last bit with values recorded at commit 7938b5c (before the move), re-recorded when the
shipped OpinionQA checkpoint v0002 (with its text prior: new questions answered per group) replaced v0001, and when
v0003 (v0002 with a matcher for reworded questions; these predictions did not change) replaced v0002, and when v0004
(retrained: the matcher's threshold chosen with validation rewordings, options paired by meaning; its weights differ
from v0003's, validation alignment 0.9032 for both) replaced v0003, and when v0005 (soft borrowing: a new question leans
on its nearest known questions' priors; validation kept step 200, alignment 0.9033) replaced v0004. Each choice
prediction's `basis`, `nearest_similarity` and `borrowed_share` (what its prior comes from) were added to the
recorded answers when /predict began to report them; the recorded numbers did not change.

Re-record (only when a change is *meant* to alter predictions, and say so in the commit):
    GPO_RECORD_PREDICTIONS=1 .venv/bin/python -m pytest tests/serving/test_recorded_predictions.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from service.config import Settings
from service.training.opinionqa import load_opinionqa

from ..api.conftest import authed_client

pytestmark = pytest.mark.slow

RECORDED = Path(__file__).with_name("recorded_predictions.json")
RECORD = os.environ.get("GPO_RECORD_PREDICTIONS", "") not in ("", "0")

PROMPT = "How likely would you be to read this book?"
BOOKS = [
    "The Silent Patient (Fiction): a psychotherapist becomes obsessed with a patient who shot her husband.",
    "Soil Chemistry for Farmers (Nonfiction): a practical textbook on nitrogen, phosphorus and soil pH.",
    "A Gentleman in Moscow (Fiction): a count is sentenced to house arrest in a grand Moscow hotel.",
    "The Body Keeps the Score (Nonfiction): how trauma reshapes body and brain, and paths to recovery.",
    "Gone Girl (Fiction): a wife disappears on her fifth wedding anniversary and her husband is suspected.",
]
NEW_QUESTIONS = [
    {"question": "Should cities build more bike lanes?", "options": ["Yes, many more", "A few more", "No more"]},
    {"question": "How much do you trust local news?", "options": ["A lot", "Some", "Not too much", "Not at all"]},
]


def _choice_requests() -> dict[str, Any]:
    ds = load_opinionqa()
    group = "Democrat"
    qids = [q.qid for q in ds.questions if ds.dist(group, q.qid) is not None][:8]
    items = [
        {
            "question": ds.question(q).text,
            "options": list(ds.question(q).options),
            "distribution": [float(v) for v in ds.dist(group, q)],
        }
        for q in qids[:5]
    ]
    known = [{"question": ds.question(q).text, "options": list(ds.question(q).options)} for q in qids[5:8]]
    return {"items": items, "questions": known + NEW_QUESTIONS}


def _predict_all(client) -> dict[str, Any]:
    """Every /predict answer of the recorded scenario, by name."""
    out: dict[str, Any] = {}
    choice = _choice_requests()
    r = client.post("/groups/dem/context", json={"mode": "replace", "items": choice["items"]})
    assert r.status_code == 200, r.text
    r = client.post("/predict", json={"group_id": "dem", "questions": choice["questions"]})
    assert r.status_code == 200, r.text
    out["choice"] = r.json()
    r = client.post("/predict", json={"context": choice["items"][:3], "questions": choice["questions"]})
    assert r.status_code == 200, r.text
    out["choice_inline"] = r.json()

    ratings = [
        {"kind": "rating", "prompt": PROMPT, "response": b, "score": s, "scale": [1, 4]}
        for b, s in zip(BOOKS[:3], (4, 1, 3), strict=True)
    ]
    r = client.post("/groups/reader/context", json={"mode": "replace", "items": ratings})
    assert r.status_code == 200, r.text
    responses = [{"prompt": PROMPT, "response": b} for b in BOOKS]
    r = client.post("/predict", json={"group_id": "reader", "responses": responses})
    assert r.status_code == 200, r.text
    out["rating"] = r.json()

    comparisons = [
        {"kind": "comparison", "prompt": PROMPT, "response_a": a, "response_b": b, "preferred": p}
        for a, b, p in ((BOOKS[0], BOOKS[1], "a"), (BOOKS[3], BOOKS[4], "b"), (BOOKS[2], BOOKS[1], "a"))
    ]
    r = client.post("/groups/chooser/context", json={"mode": "replace", "items": comparisons})
    assert r.status_code == 200, r.text
    pairs = [{"prompt": PROMPT, "response_a": BOOKS[i], "response_b": BOOKS[j]} for i, j in ((4, 1), (1, 4), (2, 3))]
    r = client.post("/predict", json={"group_id": "chooser", "pairs": pairs})
    assert r.status_code == 200, r.text
    out["comparison"] = r.json()
    return out


def test_shipped_checkpoints_predict_what_was_recorded(tmp_path: Path) -> None:
    settings = Settings(
        checkpoint="opinionqa-gpo",
        rating_checkpoint="nytbooks-rating",
        comparison_checkpoint="nytbooks-comparison",
        database_url=f"sqlite:///{tmp_path / 'gpo.sqlite3'}",
        # A cache folder of its own: vectors already on disk (from `gpo embed` or an earlier run, computed in other
        # batches) would differ from these in the last bits.
        cache_dir=tmp_path / "cache",
        redis_url=None,
        worker_url=None,
        device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever the machine's cores
    try:
        with authed_client(settings) as client:
            got = _predict_all(client)
    finally:
        torch.set_num_threads(threads)
    if RECORD:
        RECORDED.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {RECORDED.name}")
    want = json.loads(RECORDED.read_text())
    assert set(got) == set(want)
    for name in want:
        _assert_close(got[name], want[name], name)


# Bit-identical answers held for the move of issue 14 (same machine, same libraries). Across library releases
# (a fresh `make install` resolves transformers 5.x and numpy anew) and CPU kernels the last bits of float32
# move (measured: up to 1.1e-5 relative, on the pre-move code as on the current one); a real change of the model,
# its features or the serving path moves them by orders of magnitude more.
REL, ABS = 1e-4, 1e-6


def _assert_close(got: Any, want: Any, where: str) -> None:
    """Equal structure, equal strings and integers, floats within REL/ABS."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float) and math.isclose(got, want, rel_tol=REL, abs_tol=ABS), (
            f"{where}: the served predictions changed ({got!r} != {want!r})"
        )
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
