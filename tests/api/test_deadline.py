"""GPO_REQUEST_TIMEOUT_S through the real app: a prediction that cannot finish in time is dropped and answered 503
with Retry-After, and the queue it waited in is free again."""

from __future__ import annotations

import threading
import time

from .conftest import SettingsFactory, authed_client, context_item, question


def test_a_prediction_past_its_deadline_is_answered_503_and_leaves_the_queue(
    make_settings: SettingsFactory, sqlite_url: str
) -> None:
    settings = make_settings(sqlite_url, request_timeout_s=1.0, retry_after_s=3)
    with authed_client(settings) as client:
        assert client.post("/groups/g/context", json={"items": [context_item(i) for i in range(3)]}).status_code == 200
        body = {"group_id": "g", "questions": [question(5)]}
        expected = client.post("/predict", json=body).json()
        services = client.app.state.services
        gate, real = threading.Event(), services.batcher.fn

        def stuck(calls):  # the GPO forward hangs (a stalled device, a huge batch ahead)
            gate.wait(10)
            return real(calls)

        services.batcher.fn = stuck
        t0 = time.monotonic()
        late = client.post("/predict", json=body)
        assert time.monotonic() - t0 < 5
        assert (late.status_code, late.headers["retry-after"]) == (503, "3"), late.text
        assert "GPO_REQUEST_TIMEOUT_S" in late.json()["detail"]
        assert services.batcher.waiting == 0  # nothing left queued for nobody
        services.batcher.fn = real
        gate.set()
        time.sleep(0.2)  # the stuck forward finishes, unanswered
        assert client.post("/predict", json=body).json() == expected
        metrics = client.get("/metrics").text
        assert 'gpo_request_deadline_passed_total{stage="work"} 1.0' in metrics
