"""The fast path through HTTP: encoded contexts cached per version, shared by replicas, bounded batch queue."""

from __future__ import annotations

import threading
import time

import numpy as np
from fastapi.testclient import TestClient

from service.serving.predictor import AnsweredItem, Item

from .conftest import NEW_QUESTION, SettingsFactory, authed_client, context_item, question

QUESTIONS = [question(12), question(13), NEW_QUESTION]


def _states(client: TestClient) -> dict[str, float]:
    """Encoded-context lookups so far by result (local, shared, miss), from /metrics."""
    out = {"local": 0.0, "shared": 0.0, "miss": 0.0}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("gpo_context_state_lookups_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


def _full_forward(client: TestClient, items: list[dict], questions: list[dict]) -> list[np.ndarray]:
    """The predictor's full forward (context and targets together, no cache) on the same items."""
    services = client.app.state.services
    p = services.predictor

    def emb(q: str, opts: list[str]) -> np.ndarray:
        return np.stack(
            [services.cache.get(f"{services.kinds['choice'].embedder_key}|{t}") for t in p.choice_texts(q, opts)]
        )

    ctx = [
        AnsweredItem(
            c["question"], c["options"], emb(c["question"], c["options"]), np.asarray(c["distribution"], np.float32)
        )
        for c in items
    ]
    tgt = [Item(q["question"], q["options"], emb(q["question"], q["options"])) for q in questions]
    return [r.distribution for r in p.predict(ctx, tgt)]


def test_cached_context_is_used_and_a_change_invalidates_it(client: TestClient) -> None:
    items = [context_item(i) for i in range(4)]
    assert client.post("/groups/g/context", json={"items": items}).status_code == 200
    first = client.post("/predict", json={"group_id": "g", "questions": QUESTIONS}).json()
    again = client.post("/predict", json={"group_id": "g", "questions": QUESTIONS}).json()
    assert _states(client) == {"local": 1.0, "shared": 0.0, "miss": 1.0}
    assert again == first
    for got, want in zip(first["predictions"], _full_forward(client, items, QUESTIONS), strict=True):
        np.testing.assert_allclose(got["distribution"], want, atol=1e-5)

    extra = context_item(7)
    assert client.post("/groups/g/context", json={"items": [extra]}).json()["version"] == 2
    changed = client.post("/predict", json={"group_id": "g", "questions": QUESTIONS}).json()
    assert changed["context_version"] == 2
    assert _states(client)["miss"] == 2.0, "the new version is encoded afresh"
    for got, want in zip(changed["predictions"], _full_forward(client, [*items, extra], QUESTIONS), strict=True):
        np.testing.assert_allclose(got["distribution"], want, atol=1e-5)
    assert not np.allclose(changed["predictions"][0]["std"], first["predictions"][0]["std"])

    item_id = client.get("/groups/g/context").json()["items"][0]["id"]
    assert client.delete(f"/groups/g/context/{item_id}").json()["version"] == 3
    after_delete = client.post("/predict", json={"group_id": "g", "questions": QUESTIONS}).json()
    for got, want in zip(
        after_delete["predictions"], _full_forward(client, [*items[1:], extra], QUESTIONS), strict=True
    ):
        np.testing.assert_allclose(got["distribution"], want, atol=1e-5)


def test_two_replicas_share_postgres_and_redis(
    make_settings: SettingsFactory, postgres_url: str, redis_server: str, redis_prefix: str
) -> None:
    """A context change through one replica is what the other's next prediction uses."""
    settings = make_settings(postgres_url, redis_url=redis_server, redis_prefix=redis_prefix)
    with authed_client(settings) as a, authed_client(settings) as b:
        items = [context_item(i) for i in range(5)]
        assert a.post("/groups/shared/context", json={"items": items}).status_code == 200
        from_a = a.post("/predict", json={"group_id": "shared", "questions": QUESTIONS}).json()
        from_b = b.post("/predict", json={"group_id": "shared", "questions": QUESTIONS}).json()
        assert _states(b) == {"local": 0.0, "shared": 1.0, "miss": 0.0}, "b used a's encoding through Redis"
        assert from_b == from_a

        assert a.post("/groups/shared/context", json={"mode": "replace", "items": items[:2]}).json()["version"] == 2
        b_next = b.post("/predict", json={"group_id": "shared", "questions": QUESTIONS}).json()
        a_next = a.post("/predict", json={"group_id": "shared", "questions": QUESTIONS}).json()
        assert b_next["context_version"] == a_next["context_version"] == 2
        assert b_next == a_next
        for got, want in zip(b_next["predictions"], _full_forward(a, items[:2], QUESTIONS), strict=True):
            np.testing.assert_allclose(got["distribution"], want, atol=1e-5)
        assert b.delete("/groups/shared").status_code == 204
        assert a.post("/predict", json={"group_id": "shared", "questions": QUESTIONS}).status_code == 404


def test_full_prediction_queue_answers_429_with_retry_after(make_settings: SettingsFactory, sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, batch_max_requests=1, batch_max_queue=1)
    with authed_client(settings) as client:
        assert client.post("/groups/g/context", json={"items": [context_item(1)]}).status_code == 200
        services = client.app.state.services
        gate, entered = threading.Event(), threading.Event()
        real = services.predictor.predict_encoded

        def held(calls):  # the real forward, held until the test has filled the queue
            entered.set()
            gate.wait(10)
            return real(calls)

        services.predictor.predict_encoded = held
        body = {"group_id": "g", "questions": [question(2)]}
        answers: list[int] = []

        def post() -> None:
            answers.append(client.post("/predict", json=body).status_code)

        running = threading.Thread(target=post)
        running.start()
        assert entered.wait(10)
        queued = threading.Thread(target=post)
        queued.start()
        deadline = time.monotonic() + 10
        while services.batcher.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/predict", json=body)
        gate.set()
        running.join(10)
        queued.join(10)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert "retry later" in refused.json()["detail"]
        assert answers == [200, 200]
        assert "gpo_queue_full_total 1.0" in client.get("/metrics").text


def test_two_replica_processes_on_two_ports(
    model_store, tiny_lm_path, postgres_url: str, redis_server: str, redis_prefix: str, tmp_path
) -> None:
    """Two `gpo serve` processes on different ports over one Postgres and one Redis: a change through one is
    what the other answers with next, and its prediction equals the first replica's."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.ports import free_ports

    from .conftest import CHECKPOINT, api_key, bearer

    env = {
        **os.environ,
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_DEVICE": "cpu",
        "GPO_CACHE_DIR": str(tmp_path / "cache"),
        "GPO_MODEL_STORE": str(model_store),
        "GPO_CHECKPOINT": CHECKPOINT,
        "GPO_DATABASE_URL": postgres_url,
        "GPO_REDIS_URL": redis_server,
        "GPO_REDIS_PREFIX": redis_prefix,
        "GPO_TORCH_THREADS": "1",
    }
    ports = free_ports(2)
    logs = [tmp_path / f"replica-{i}.log" for i in range(2)]
    procs = []
    for port, log in zip(ports, logs, strict=True):
        with log.open("wb") as err:  # what a replica says is kept: the assertion shows it if one exits
            cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.monotonic() + 120
        for url, proc, log in zip(urls, procs, logs, strict=True):
            while True:
                assert proc.poll() is None, f"a replica exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "replicas not ready in 120 s"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        a, b = urls
        headers = bearer(api_key(postgres_url))
        items = [context_item(i) for i in range(6)]
        body = {"group_id": "two", "questions": QUESTIONS}
        assert httpx.post(f"{a}/groups/two/context", json={"items": items}, headers=headers).json()["version"] == 1
        first_b = httpx.post(f"{b}/predict", json=body, headers=headers).json()
        assert first_b["context_version"] == 1
        for version, change in (
            (2, {"mode": "append", "items": [context_item(9)]}),
            (3, {"mode": "replace", "items": items[:3]}),
        ):
            assert httpx.post(f"{a}/groups/two/context", json=change, headers=headers).json()["version"] == version
            from_b = httpx.post(f"{b}/predict", json=body, headers=headers).json()
            from_a = httpx.post(f"{a}/predict", json=body, headers=headers).json()
            assert from_b["context_version"] == from_a["context_version"] == version
            assert from_b == from_a
        assert from_b["predictions"] != first_b["predictions"]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
