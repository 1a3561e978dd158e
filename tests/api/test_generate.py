"""/generate: n distinct sampled responses, scored by GPO given the group's context, best first, repeatable."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .conftest import context_item

PROMPT = "Write one sentence about the economy."


@pytest.fixture
def group(client: TestClient) -> str:
    assert client.post("/groups/gen/context", json={"items": [context_item(i) for i in range(5)]}).status_code == 200
    return "gen"


def _generate(client: TestClient, **fields: object) -> dict:
    body = {"group_id": "gen", "prompt": PROMPT, "n": 4, "max_new_tokens": 8, "temperature": 1.0, **fields}
    answer = client.post("/generate", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_n_distinct_responses_best_first(client: TestClient, group: str) -> None:
    out = _generate(client, seed=7)
    texts = [r["text"] for r in out["responses"]]
    scores = [r["score"] for r in out["responses"]]
    assert len(texts) == 4 and len({t.strip() for t in texts}) == 4
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) == pytest.approx(1.0, abs=1e-9)
    assert (out["model_version"], out["context_version"]) == ("api-tiny/v0001", 1)
    assert out["n_sampled"] >= 4


def test_a_fixed_seed_gives_the_same_answer(client: TestClient, group: str) -> None:
    first = _generate(client, seed=11)
    assert _generate(client, seed=11) == first
    assert _generate(client, seed=12)["responses"] != first["responses"]


def test_greedy_decoding_gives_one_response(client: TestClient, group: str) -> None:
    """Temperature 0 repeats one answer: the duplicates are dropped (no resampling) and n_sampled says so."""
    out = _generate(client, temperature=0.0, n=3)
    assert len(out["responses"]) == 1 and out["n_sampled"] == 3
    assert out["responses"][0]["score"] == pytest.approx(1.0)


def test_a_vanishing_temperature_is_greedy_not_a_server_error(client: TestClient, group: str) -> None:
    """schemathesis sent temperature 1.67e-285 (0 in float32): NaN sampling probabilities and a 500 before."""
    greedy = _generate(client, temperature=0.0, n=3)
    assert _generate(client, temperature=1.6680466256861375e-285, n=3) == greedy


def test_generate_errors(client: TestClient, group: str) -> None:
    unknown = client.post("/generate", json={"group_id": "nobody", "prompt": PROMPT})
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "group 'nobody' not found"})
    too_many = client.post("/generate", json={"group_id": "gen", "prompt": PROMPT, "n": 9})  # settings: at most 8
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "n"]
    too_long = client.post("/generate", json={"group_id": "gen", "prompt": PROMPT, "max_new_tokens": 513})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "max_new_tokens"]
    blank = client.post("/generate", json={"group_id": "gen", "prompt": "   "})
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_duplicates_are_resampled_with_the_next_seeds(client: TestClient, group: str) -> None:
    """Nearly greedy sampling repeats itself: two more rounds (settings.generate_sampling_rounds = 3) ask for the
    missing responses, then the answer has fewer than n and n_sampled counts every sample (3 + 2 + 2)."""
    out = _generate(client, temperature=0.01, n=3, seed=1, max_new_tokens=3)
    assert (len(out["responses"]), out["n_sampled"]) == (1, 7)
    assert _generate(client, temperature=0.01, n=3, seed=1, max_new_tokens=3) == out
    assert "gpo_generate_duplicates_total 12.0" in client.get("/metrics").text
