"""Start-up and restart: registered context survives a restart; a checkpoint of another embedder refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.serving.predictor import EmbedderMismatch

from .conftest import SettingsFactory, authed_client, context_item, free_port, question


def test_restart_keeps_the_registered_context(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'gpo.sqlite3'}")
    with authed_client(settings) as client:
        client.post("/groups/keep/context", json={"items": [context_item(i) for i in range(3)]})
        before = client.get("/groups/keep/context").json()
        predicted = client.post("/predict", json={"group_id": "keep", "questions": [question(9)]}).json()
    with authed_client(settings) as client:
        assert client.get("/groups/keep/context").json() == before
        assert client.post("/predict", json={"group_id": "keep", "questions": [question(9)]}).json() == predicted


def test_a_checkpoint_of_another_embedder_refuses_to_start(
    make_settings: SettingsFactory, sqlite_url: str, mismatched_store: Path
) -> None:
    app = create_app(make_settings(sqlite_url, model_store=mismatched_store))
    with pytest.raises(EmbedderMismatch, match="was trained on embeddings 'other-lm@rev1") as refused:
        with TestClient(app):
            pass
    assert "Serve it with the embedder it was trained on" in str(refused.value)


def test_gpo_serve_exits_with_the_message(
    mismatched_store: Path, tiny_lm_path: Path, sqlite_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_DEVICE": "cpu",
        "GPO_CACHE_DIR": str(tmp_path / "cache"),
        "GPO_MODEL_STORE": str(mismatched_store),
        "GPO_CHECKPOINT": "api-tiny",
        "GPO_DATABASE_URL": sqlite_url,
        "GPO_TORCH_THREADS": "1",
    }
    env.pop("GPO_REDIS_URL", None)
    env.pop("GPO_WORKER_URL", None)
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "refusing to start: checkpoint api-tiny/v0001 was trained on embeddings 'other-lm@rev1" in out.stderr
