"""API fixtures: a real checkpoint trained by `gpo train` on the tiny LM, settings per database and cache, Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import create_key
from service.config import Settings
from service.db.migrate import upgrade_database
from service.db.session import make_engine, make_sessionmaker
from service.training.datasets import PreferenceDataset, Question
from service.training.jsonl import write_jsonl
from tests.ports import free_port

CHECKPOINT = "api-tiny"
REDIS_URL = "redis://127.0.0.1:6379/0"
CLOSED_PORT_URL = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once
N_QUESTIONS = 24

SettingsFactory = Callable[..., Settings]


def question_text(i: int) -> str:
    return f"How often do you think about topic number {i}?"


def options_of(i: int) -> list[str]:
    return [f"answer {j} to topic {i}" for j in range(2 + i % 3)]


def training_dataset(n_groups: int = 6, seed: int = 0) -> PreferenceDataset:
    """Groups whose answers are softmax(question bias + loadings @ group factor): enough structure to train on."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_groups, 2))
    questions, dists = [], {f"g{i}": {} for i in range(n_groups)}
    for qi in range(N_QUESTIONS):
        opts = options_of(qi)
        q = Question(f"q{qi:03d}", question_text(qi), tuple(opts), tuple(float(j + 1) for j in range(len(opts))))
        questions.append(q)
        bias, load = rng.normal(size=len(opts)), rng.normal(size=(len(opts), 2))
        for gi in range(n_groups):
            logits = bias + load @ z[gi]
            p = np.exp(logits - logits.max())
            dists[f"g{gi}"][q.qid] = p / p.sum()
    return PreferenceDataset(questions=questions, groups=list(dists), dists=dists)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, tiny_lm_path: Path) -> Path:
    """A model store holding one real checkpoint, meta-trained by `gpo train` on embeddings of the tiny LM."""
    root = tmp_path_factory.mktemp("api-store")
    data = root / "data.jsonl"
    write_jsonl(training_dataset(), data)
    env = {
        **os.environ,
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_CACHE_DIR": str(root / "cache"),
        "GPO_MODEL_STORE": str(root / "store"),
        "GPO_TORCH_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "service.cli", "train", "--data", str(data), "--name", CHECKPOINT]
    cmd += ["--max-steps", "10", "--threads", "1", "--no-matcher"]  # matching: tests/api/test_startup.py
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "store"


RATING_CHECKPOINT = "api-rating"
COMPARISON_CHECKPOINT = "api-comparison"
RATING_PROMPT = "Rate this reply."


def ratings_dataset(n_people: int = 40, n_items: int = 30, seed: int = 0):
    """People rating replies 1..5: a popularity per reply plus a personal taste; enough to train on."""
    from service.training.ratings import RatedItem, RatingsDataset

    rng = np.random.default_rng(seed)
    pop, feat = rng.normal(size=n_items), rng.normal(size=(n_items, 2))
    items = [RatedItem(f"r{j}", f"reply number {j} talks about topic {j % 7}") for j in range(n_items)]
    scores = {}
    for p in range(n_people):
        taste = rng.normal(size=2)
        rated = rng.choice(n_items, size=15, replace=False)
        latent = pop[rated] + feat[rated] @ taste + rng.normal(scale=0.3, size=15)
        levels = np.clip(np.round(3 + latent), 1, 5)
        scores[f"person{p}"] = {f"r{j}": float(v) for j, v in zip(rated, levels, strict=True)}
    return RatingsDataset(items=items, people=list(scores), scores=scores, scale=(1.0, 5.0), prompt=RATING_PROMPT)


@pytest.fixture(scope="session")
def rating_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory, tiny_lm_path: Path) -> Path:
    """The choice checkpoint's store plus a rating and a comparison checkpoint trained by `gpo train-individuals` on
    the tiny LM."""
    from service.training.ratings import write_ratings_jsonl

    root = tmp_path_factory.mktemp("rating-store")
    store = root / "store"
    shutil.copytree(model_store, store)
    data = root / "ratings.jsonl"
    write_ratings_jsonl(ratings_dataset(), data)
    env = {
        **os.environ,
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_CACHE_DIR": str(root / "cache"),
        "GPO_MODEL_STORE": str(store),
        "GPO_TORCH_THREADS": "1",
    }
    for name, kind in ((RATING_CHECKPOINT, "rating"), (COMPARISON_CHECKPOINT, "comparison")):
        cmd = [sys.executable, "-m", "service.cli", "train-individuals", "--data", str(data), "--name", name]
        cmd += ["--kind", kind, "--max-steps", "20", "--time-budget-s", "60", "--prior-rank", "3", "--threads", "1"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    return store


@pytest.fixture(scope="session")
def mismatched_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint, but its config says it was trained on another embedder."""
    store = tmp_path_factory.mktemp("mismatched-store")
    shutil.copytree(model_store / CHECKPOINT, store / CHECKPOINT)
    (config_path,) = (store / CHECKPOINT).glob("v*/config.json")
    config = json.loads(config_path.read_text())
    config["embedder"]["key_prefix"] = "other-lm@rev1|mean|gpo-mc-v1"
    config_path.write_text(json.dumps(config))
    return store


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The local Redis on 127.0.0.1:6379 (skips when none answers)."""
    if not _redis_answers(REDIS_URL):
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix of this test; every key under it is deleted afterwards."""
    prefix = f"gpo-api-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    raw = redis.Redis.from_url(redis_server)
    keys = list(raw.scan_iter(match=prefix + "*", count=1000))
    if keys:
        raw.unlink(*keys)
    raw.close()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Other processes (training jobs) share this machine's cores: keep the in-process forwards on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _settings_factory(model_store: Path, tiny_lm_path: Path, cache_dir: Path) -> SettingsFactory:
    """Settings(database_url, **overrides) on the tiny LM (in-process worker) and the trained checkpoint."""

    def make(database_url: str, **overrides: Any) -> Settings:
        fields: dict[str, Any] = dict(
            embedder=str(tiny_lm_path),
            device="cpu",
            cache_dir=cache_dir,
            model_store=model_store,
            checkpoint=CHECKPOINT,
            database_url=database_url,
            redis_url=None,
            worker_url=None,
        )
        fields.update(overrides)
        return Settings(**fields)

    return make


@pytest.fixture
def make_settings(model_store: Path, tiny_lm_path: Path, tmp_path: Path) -> SettingsFactory:
    """Settings of the API on the tiny LM (in-process worker) and the trained checkpoint; overrides as kwargs."""
    return _settings_factory(model_store, tiny_lm_path, tmp_path / "cache")


@pytest.fixture(scope="module")
def module_settings(model_store: Path, tiny_lm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> SettingsFactory:
    """`make_settings` for module-scoped apps."""
    return _settings_factory(model_store, tiny_lm_path, tmp_path_factory.mktemp("cache"))


@pytest.fixture
def settings(make_settings: SettingsFactory, sqlite_url: str) -> Settings:
    """The embedded default: a SQLite file and the in-process LRU cache."""
    return make_settings(sqlite_url)


def api_key(database_url: str, tenant: str = "default", name: str = "test") -> str:
    """A new API key of `tenant` in that database (migrated first), as `gpo keys create` makes one."""
    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        _, secret = create_key(make_sessionmaker(engine), tenant, name)
    finally:
        engine.dispose()
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def authed_client(settings: Settings, tenant: str = "default") -> TestClient:
    """A TestClient of the app over `settings` that sends a fresh key of `tenant` on every request."""
    return TestClient(create_app(settings), headers=bearer(api_key(settings.database_url, tenant)))


@contextmanager
def served_app(settings: Settings) -> Iterator[str]:
    """The app behind a real uvicorn on a free loopback port (its lifespan run by uvicorn); yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with authed_client(settings) as c:
        yield c


# ---------------------------------------------------------------------------------------------- request bodies


def context_item(i: int, *, counts: bool = False, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Context item on question `i` of the training dataset (known to the checkpoint's prior bank)."""
    opts = options_of(i)
    p = (rng or np.random.default_rng(i)).dirichlet(np.ones(len(opts)))
    item: dict[str, Any] = {"question": question_text(i), "options": opts}
    if counts:
        item["counts"] = [int(c) for c in np.round(p * 100) + 1]
    else:
        item["distribution"] = p.tolist()
    return item


def question(i: int) -> dict[str, Any]:
    return {"question": question_text(i), "options": options_of(i)}


NEW_QUESTION = {"question": "Which of these would you pick for dinner?", "options": ["Soup", "Pasta", "Salad", "Tacos"]}
