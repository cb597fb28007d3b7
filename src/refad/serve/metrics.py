"""Prometheus metrics, one CollectorRegistry per app (two apps in a process never share)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Requests, errors, latency, batch sizes, queue wait and readiness."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("refad_http_requests", "HTTP requests answered.",
                                ["route", "method", "status"], registry=r)
        self.errors = Counter("refad_http_errors", "HTTP answers with a 4xx or 5xx status.",
                              ["route", "status"], registry=r)
        self.latency = Histogram("refad_http_request_seconds", "Request latency.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("refad_batch_size", "Images scored together per batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("refad_images_scored", "Images scored.", registry=r)
        self.queue_wait = Histogram("refad_queue_wait_seconds", "Time an image waits to be "
                                    "scored.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("refad_batch_seconds", "Scoring time of one batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("refad_model_ready", "1 once the model is loaded and warm.",
                           registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every answer, including 401s and 404s; unknown paths share one label."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        method = scope["method"] if scope["method"] in _METHODS else "other"
        status = [500]
        tic = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m = self.metrics
            m.latency.labels(route).observe(time.perf_counter() - tic)
            m.requests.labels(route, method, str(status[0])).inc()
            if status[0] >= 400:
                m.errors.labels(route, str(status[0])).inc()
