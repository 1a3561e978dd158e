"""/healthz, /readyz (each dependency checked for real, failures reported truthfully), /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.app import create_app

from .conftest import CLOSED_PORT_URL, SettingsFactory, authed_client, bearer, context_item, question


def test_healthz(client: TestClient) -> None:
    assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (200, {"status": "ok"})


def test_ready_when_everything_answers(client: TestClient) -> None:
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ready",
        "checks": {"database": "ok", "cache": "ok", "worker": "ok", "model": "ok"},
    }


def test_redis_down_degrades_but_serves(make_settings: SettingsFactory, sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, redis_url=f"redis://{CLOSED_PORT_URL}/0")
    with authed_client(settings) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 200
        assert answer.json()["checks"] == {"database": "ok", "cache": "degraded", "worker": "ok", "model": "ok"}
        assert client.post("/groups/r/context", json={"items": [context_item(0)]}).status_code == 200
        predicted = client.post("/predict", json={"group_id": "r", "questions": [question(3)]})
        assert predicted.status_code == 200, predicted.text


def test_worker_down_is_not_ready_and_answers_503(make_settings: SettingsFactory, sqlite_url: str) -> None:
    """An HTTP worker that does not answer: the API starts (the worker may come later) but is not ready."""
    settings = make_settings(sqlite_url, worker_url=f"http://{CLOSED_PORT_URL}", retry_after_s=7)
    with authed_client(settings) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "not ready",
            "checks": {"database": "ok", "cache": "ok", "worker": "unavailable", "model": "ok"},
        }
        for path, body in [
            ("/groups/w/context", {"items": [context_item(0)]}),
            ("/predict", {"context": [context_item(0)], "questions": [question(3)]}),
        ]:
            refused = client.post(path, json=body)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "7", refused.text
            assert refused.json() == {"detail": "the embedding worker is unavailable; retry later"}
        assert client.get("/groups/w").status_code == 404  # the refused registration stored nothing
        assert client.get("/healthz").status_code == 200


def test_database_down_is_not_ready_and_answers_503(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        f"postgresql+psycopg://gpo@{CLOSED_PORT_URL}/gpo", migrate_on_start=False, database_connect_timeout_s=2
    )
    # No key can be made in a database that is down; a well-formed one makes the API look it up (503, not 401).
    with TestClient(create_app(settings), headers=bearer("gpo_" + "k" * 43)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
        for method, path in [("GET", "/groups"), ("GET", "/groups/a"), ("DELETE", "/groups/a")]:
            answer = client.request(method, path)
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "5", (method, path, answer.text)
            assert answer.json() == {"detail": "the database is unavailable; retry later"}


def test_metrics(client: TestClient) -> None:
    client.post("/groups/secret-m/context", json={"items": [context_item(0)]})
    client.post("/predict", json={"group_id": "secret-m", "questions": [question(1), question(2)]})
    client.get("/groups/secret-unknown")
    text = client.get("/metrics").text
    assert 'gpo_request_seconds_count{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'gpo_request_seconds_count{method="POST",route="/groups/{group_id}/context",status="200"} 1.0' in text
    assert 'gpo_request_seconds_count{method="GET",route="/groups/{group_id}",status="404"} 1.0' in text
    assert "gpo_predict_batch_questions_sum 2.0" in text
    assert 'gpo_model_info{embedder="' in text and 'model_version="api-tiny/v0001"' in text
    assert "gpo_context_version_last 1.0" in text
    assert 'gpo_embedding_cache_lookups_total{backend="lru",result="miss"}' in text
    assert "secret" not in text  # route templates only: no group id (tenant data) in labels


def test_blocking_work_gets_few_threads_and_the_event_loop_is_watched(
    make_settings: SettingsFactory, sqlite_url: str
) -> None:
    """GPO_THREADS bounds the threads of blocking work (anyio's default, 40, starved the event loop of the GIL under
    overload: requests waited seconds before the app saw them), and gpo_event_loop_lag_seconds shows such waits."""
    import time

    import anyio.to_thread

    with authed_client(make_settings(sqlite_url, threads=3)) as client:
        assert client.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens) == 3
        time.sleep(0.35)
        lines = client.get("/metrics").text.splitlines()
    (count,) = [line for line in lines if line.startswith("gpo_event_loop_lag_seconds_count")]
    assert float(count.rsplit(" ", 1)[1]) >= 2
