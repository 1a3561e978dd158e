"""Prometheus metrics of the API app and of the embedding worker app (a registry each), and the ASGI middleware
that counts and times every request of either."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
WORKER_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class AppMetrics(ABC):
    """The metrics of one app on a registry of its own (two apps in one process never share counters), and how
    it records one HTTP request (`MetricsMiddleware` calls it)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.abandoned = Counter(
            "gpo_requests_abandoned",
            "requests whose client went away before the answer: their queued work was dropped",
            registry=self.registry,
        )

    def observe_disconnect(self) -> None:
        self.abandoned.inc()

    @abstractmethod
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request: `route` is the route template (or "unmatched"), never the raw path."""

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Metrics(AppMetrics):
    """Every metric of the API app.

    Group ids are never label values: their number is unbounded and they are tenant data.
    """

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.request_seconds = Histogram(
            "gpo_request_seconds",
            "HTTP request latency by route template, method and status",
            ["route", "method", "status"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.cache_lookups = Counter(
            "gpo_embedding_cache_lookups",
            "item embeddings looked up in the vector cache, by result (hit or miss)",
            ["backend", "result"],
            registry=r,
        )
        self.embedded_texts = Counter("gpo_embedded_texts", "texts the worker embedded for the API", registry=r)
        self.batch_requests = Histogram(
            "gpo_predict_batch_requests", "episodes (requests) per GPO forward", registry=r, buckets=BATCH_BUCKETS
        )
        self.batch_questions = Histogram(
            "gpo_predict_batch_questions", "target questions per GPO forward", registry=r, buckets=BATCH_BUCKETS
        )
        self.forward_seconds = Histogram(
            "gpo_predict_forward_seconds", "time of one GPO forward", registry=r, buckets=LATENCY_BUCKETS
        )
        self.predictions = Counter(
            "gpo_predictions", "predictions served, by context source (stored group or inline)", ["context"], registry=r
        )
        self.prediction_basis = Counter(
            "gpo_prediction_basis",
            "choice predictions by what their prior comes from (known, reworded, borrowed, text, none: README, 'What "
            "to expect') and route (predict; generate: its samples as one question's options)",
            ["basis", "route"],
            registry=r,
        )
        self.context_version = Gauge(
            "gpo_context_version_last", "context version of the last prediction made from a stored group", registry=r
        )
        self.context_items = Histogram(
            "gpo_context_items", "context items per prediction", registry=r, buckets=BATCH_BUCKETS + (1024, 2048)
        )
        self.reembedded_items = Counter(
            "gpo_reembedded_context_items", "stored context items re-embedded after an embedder change", registry=r
        )
        self.generate_duplicates = Counter(
            "gpo_generate_duplicates", "sampled responses /generate dropped as duplicates", registry=r
        )
        self.context_states = Counter(
            "gpo_context_state_lookups",
            "encoded group contexts looked up, by where they were found (local, shared, miss)",
            ["result"],
            registry=r,
        )
        self.encode_seconds = Histogram(
            "gpo_context_encode_seconds", "time to encode one group's context", registry=r, buckets=LATENCY_BUCKETS
        )
        self.queue_full = Counter("gpo_queue_full", "requests refused with 429 (batch queue full)", registry=r)
        self.deadline_passed = Counter(
            "gpo_request_deadline_passed",
            "requests cut at GPO_REQUEST_TIMEOUT_S, by what they were doing (body: still reading it; work)",
            ["stage"],
            registry=r,
        )
        self.deadline_late_seconds = Histogram(
            "gpo_request_deadline_late_seconds",
            "how long after GPO_REQUEST_TIMEOUT_S a cut request was answered (its work unwinding, the event loop busy)",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
        )
        self.loop_lag_seconds = Histogram(
            "gpo_event_loop_lag_seconds",
            "how late a 0.1 s timer of the API's event loop fired: while it is late, no request is read or answered",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.model = Info("gpo_model", "the served checkpoint and the embedder it runs with", registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route, method, str(status)).observe(seconds)

    def observe_deadline(self, stage: str, late_s: float) -> None:
        self.deadline_passed.labels(stage).inc()
        self.deadline_late_seconds.observe(late_s)


class WorkerMetrics(AppMetrics):
    """The embedding worker app's metrics: its requests, counted and timed by route template and status."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = Counter(
            "gpo_worker_requests", "worker HTTP requests", ["route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "gpo_worker_request_seconds",
            "worker HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=WORKER_LATENCY_BUCKETS,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)


class MetricsMiddleware:
    """Records each HTTP request in an app's metrics: route template (bounded label values), method, status and
    time. Pure ASGI (no buffering)."""

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees when the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        except asyncio.CancelledError:
            # cut before an answer: its deadline passed (the client then gets 503 from RequestDeadline) or its client
            # went away. Recorded as 499 (nginx's "client closed request"), never as a 500 nobody saw.
            status = 499 if status == 500 else status
            raise
        finally:
            # The router stores the matched route in the scope; the raw path would be an unbounded label.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - t0)
