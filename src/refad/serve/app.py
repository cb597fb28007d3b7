"""The FastAPI app: predict, model card, health, metrics and the inspection page.

The model loads in a background thread after start-up, so the process answers at once: the
health check says "up", and /readyz, /v1/model and /v1/predict say 503 until the model is loaded
and warm. Every error is a 4xx (or a 503 while not ready) with {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import refad
from refad.pipeline.postprocess import Prediction
from refad.serve.backend import (
    Backend,
    RequestError,
    check_category,
    check_threshold,
)
from refad.serve.batching import BatcherClosed, MicroBatcher, QueueFull
from refad.serve.decode import ImageRejected, decode_image, image_pixels
from refad.serve.errors import ApiError, error_response
from refad.serve.limits import PixelBudget, read_body
from refad.serve.memory import release_free_memory
from refad.serve.metrics import Metrics, MetricsMiddleware
from refad.serve.multipart import Part, TooManyParts, parse_form
from refad.serve.pictures import OUTPUTS, render_outputs
from refad.serve.schemas import PREDICT_FORM, ErrorBody, ModelCard, PredictResponse, Status
from refad.serve.security import ApiKeyMiddleware
from refad.serve.settings import Settings

log = logging.getLogger("refad.serve")

STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/app.css": ("app.css", "text/css; charset=utf-8")}
ROUTES = frozenset({"/healthz", "/readyz", "/v1/model", "/v1/predict", "/metrics",
                    "/openapi.json", *STATIC_FILES})
FORM_FIELDS = frozenset({"image", "category", "threshold", "outputs"})
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        400: "Bad request (the message names the problem)", 401: "Missing or wrong API key",
        413: "Body, image count or pixel count over a limit", 415: "Not an image or not multipart",
        503: "Model not loaded yet, or the server is busy or shutting down",
    }.items()
}


@dataclass
class ServeState:
    """What one app holds: one backend, one batcher, its own metrics."""

    settings: Settings
    metrics: Metrics
    batcher: MicroBatcher
    pixels: PixelBudget
    backend: Backend | None = None
    info: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    load_error: str | None = None
    loader: threading.Thread | None = None  # the thread building the backend, once started
    stopped: threading.Event = field(default_factory=threading.Event)  # the app has shut down

    @property
    def loading(self) -> bool:
        """The backend is still being built (a stop now leaves its thread inside torch)."""
        return self.loader is not None and self.loader.is_alive()


def _warm_pictures(result: Prediction) -> None:
    """Render every picture kind of one warm-up result, so their libraries (matplotlib's colour
    maps, the PNG encoder) load before the server says ready, not in the first request."""
    render_outputs(result, OUTPUTS)


def _call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """``callback`` on the server's loop; nothing once the server has stopped (its loop is
    closed), where it raised from the loader thread and printed a traceback."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _load(state: ServeState, factory: Callable[[], Backend], loop: asyncio.AbstractEventLoop,
          on_error: Callable[[BaseException], None] | None) -> None:
    """Build and warm the backend (in a daemon thread), then flip the app to ready."""
    try:
        tic = time.perf_counter()
        backend = factory()
        if state.stopped.is_set():
            return  # stopped while loading: no warm-up for a server that is gone
        info = dict(backend.info())
        if state.settings.warmup:
            _warm_pictures(backend.warmup(state.settings.max_batch)[0])
        if state.settings.release_memory:
            release_free_memory()
    except BaseException as exc:  # noqa: BLE001 - reported by /readyz and the log
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        log.error("model failed to load: %s", message)

        def failed(error: BaseException = exc) -> None:  # `exc` is unbound after `except`
            state.load_error = message
            if on_error is not None:
                on_error(error)

        _call_on_loop(loop, failed)
        return

    def ready() -> None:
        state.backend, state.info, state.ready = backend, info, True
        state.metrics.ready.set(1)
        log.info("model ready in %.1f s (%s %s)", time.perf_counter() - tic,
                 info.get("method"), info.get("backbone"))

    _call_on_loop(loop, ready)


def _static(name: str) -> bytes:
    return resources.files("refad.serve").joinpath("static", name).read_bytes()


def create_app(
    backend_factory: Callable[[], Backend],
    settings: Settings | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """An app that builds its backend with ``backend_factory`` in the background at start-up.

    ``on_load_error`` is called (on the event loop) if loading fails; the server uses it to exit.
    """
    settings = settings or Settings()
    metrics = Metrics()

    def predict(images, categories, thresholds):  # runs in the batcher's worker thread
        assert state.backend is not None
        try:
            return state.backend.predict_batch(images, categories, thresholds)
        finally:
            if settings.release_memory:
                release_free_memory()  # the batch's activations go back to the system

    def on_batch(size: int, seconds: float, waits: list[float]) -> None:
        metrics.observe_batch(size, seconds)
        for wait in waits:
            metrics.queue_wait.observe(wait)

    state = ServeState(settings, metrics, MicroBatcher(
        predict, settings.max_batch, settings.max_wait_ms, settings.max_queue, on_batch),
        PixelBudget(settings.max_pixels_in_flight))
    pages = {path: (_static(name), kind) for path, (name, kind) in STATIC_FILES.items()}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        loop = asyncio.get_running_loop()
        # a daemon: a stop must not wait for a load that can take minutes (run_server ends a
        # process stopped by a signal while it runs; see there)
        state.loader = threading.Thread(
            target=_load, args=(state, backend_factory, loop, on_load_error),
            name="refad-load", daemon=True)
        state.loader.start()
        yield
        state.stopped.set()
        await state.batcher.stop()

    app = FastAPI(title="refad serve", version=refad.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  description="Anomaly scores, decisions and heatmaps from a trained refad model.")
    app.state.serve = state
    _add_error_handlers(app)
    app.add_middleware(AnswerWhenCancelled)  # inside the metrics: its 503s are counted
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)

    def require_ready() -> None:
        if state.load_error is not None:
            raise ApiError(503, f"model failed to load: {state.load_error}")
        if not state.ready:
            raise ApiError(503, "model is loading; retry shortly", {"Retry-After": "1"})

    @app.get("/healthz", response_model=Status, tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (whether or not the model is loaded)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, responses={503: ERRORS[503]}, tags=["health"])
    async def readyz() -> dict[str, str]:
        """The model is loaded and warmed up: predictions are answered."""
        require_ready()
        return {"status": "ready"}

    @app.get("/v1/model", response_model=ModelCard, responses=ERRORS, tags=["model"])
    async def model_card() -> JSONResponse:
        """Method, backbone, input size, categories, thresholds, refad version, limits."""
        require_ready()
        return JSONResponse(_model_card(state))

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
              openapi_extra=PREDICT_FORM, tags=["model"])
    async def predict_route(request: Request) -> JSONResponse:
        """Score one or several images (multipart field ``image``, repeated)."""
        require_ready()
        return JSONResponse(await _predict(state, request))

    @app.get("/metrics", tags=["health"], responses={401: ERRORS[401]},
             response_class=Response)
    async def metrics_route() -> Response:
        """Prometheus text format: requests, errors, latency, batch sizes, queue wait."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    for path in STATIC_FILES:
        body, kind = pages[path]

        async def page(body: bytes = body, kind: str = kind) -> Response:  # type: ignore[misc]
            return Response(body, media_type=kind, headers={
                "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:",
            })

        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    return app


SHUTTING_DOWN = "the server is shutting down"


class AnswerWhenCancelled:
    """A request whose task is cancelled still gets a 503 in JSON. uvicorn cancels requests
    on a forced stop (a second Ctrl-C) and when the drain time runs out; the cancellation
    reached uvicorn, which answered a plain-text 500 and logged a CancelledError traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11
                task.uncancel()
            if started:  # part of the answer is out: the connection just ends
                return
            log.warning("%s %s cancelled: the server is stopping", scope["method"],
                        scope["path"][:100])
            await error_response(503, SHUTTING_DOWN)(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.url.path[:100]}"
        elif exc.status_code == 405:
            message = f"method {request.method[:20]} not allowed on {request.url.path[:100]}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"invalid request: {where} {first.get('msg', '')}".strip())

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal error (details are in the server log)")


def _model_card(state: ServeState) -> dict[str, Any]:
    s = state.settings
    card = dict(state.info)
    card["limits"] = {"max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms,
                      "max_images": s.max_images, "max_body_bytes": s.max_body_bytes,
                      "max_image_pixels": s.max_image_pixels,
                      "max_pixels_in_flight": s.max_pixels_in_flight}
    card["api_key_required"] = s.api_key is not None
    return card


@dataclass
class _Form:
    images: list[Part]
    category: str | None
    threshold: float | None
    outputs: tuple[str, ...]


def _text(part: Part) -> str:
    try:
        return part.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ApiError(400, f"form field {part.name!r} is not UTF-8 text") from None


def _parse_outputs(values: list[str]) -> tuple[str, ...]:
    wanted: list[str] = []
    for value in values:
        for item in (v.strip().lower() for v in value.split(",")):
            if item in ("", "none"):
                continue
            if item not in OUTPUTS:
                raise ApiError(400, f"unknown output {item[:30]!r}; choose from "
                                    f"{', '.join(OUTPUTS)} or none")
            if item not in wanted:
                wanted.append(item)
    return tuple(wanted)


def _read_form(parts: list[Part], max_images: int) -> _Form:
    images = [p for p in parts if p.name == "image"]
    singles: dict[str, str] = {}
    outputs: list[str] = []
    for part in parts:
        if part.name not in FORM_FIELDS:
            raise ApiError(400, f"unknown form field {part.name[:40]!r}; expected "
                                f"{', '.join(sorted(FORM_FIELDS))}")
        if part.name == "outputs":
            outputs.append(_text(part))
        elif part.name != "image":
            if part.name in singles:
                raise ApiError(400, f"form field {part.name!r} given more than once")
            singles[part.name] = _text(part)
    if not images:
        raise ApiError(400, "no image: send one or more files in the form field 'image'")
    if len(images) > max_images:
        raise ApiError(413, f"{len(images)} images in one request; the limit is {max_images}")
    for name in ("category", "threshold"):  # `-F category=$CAT` with CAT unset: the global
        # threshold would have decided silently, as if no category had been named
        if singles.get(name) == "":
            raise ApiError(400, f"{name} is empty; leave the field out to use the default")
    threshold: float | None = None
    if singles.get("threshold"):
        try:
            threshold = float(singles["threshold"])
        except ValueError:
            raise ApiError(400, "threshold is not a number") from None
    try:
        check_threshold(threshold)
    except RequestError as exc:
        raise ApiError(400, str(exc)) from None
    return _Form(images, singles.get("category"), threshold, _parse_outputs(outputs))


def _each_image(parts: list[Part], max_pixels: int,
                read: Callable[[bytes, str, int], Any]) -> list[Any]:
    """``read`` applied to every upload; an ImageRejected becomes its 4xx."""
    out = []
    for i, part in enumerate(parts):
        try:
            out.append(read(part.data, part.filename or f"image {i}", max_pixels))
        except ImageRejected as exc:
            raise ApiError(exc.status, str(exc)) from None
    return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


async def _predict(state: ServeState, request: Request) -> dict[str, Any]:
    s = state.settings
    tic = time.perf_counter()
    body = await read_body(request, s.max_body_bytes)
    try:
        parts = parse_form(body, request.headers.get("content-type"), s.max_images + 8)
    except TooManyParts as exc:
        raise ApiError(413, f"{exc}; the limit is {s.max_images} images per request") from None
    except RequestError as exc:
        status = 415 if "expected a multipart" in str(exc) else 400
        raise ApiError(status, str(exc)) from None
    form = _read_form(parts, s.max_images)
    try:
        check_category(state.info, form.category)
    except RequestError as exc:
        raise ApiError(400, str(exc)) from None
    sizes = await asyncio.to_thread(_each_image, form.images, s.max_image_pixels, image_pixels)
    with state.pixels.reserve(sum(sizes)):
        return await _score_form(state, form, tic)


async def _score_form(state: ServeState, form: _Form, tic: float) -> dict[str, Any]:
    """Decode, score (batched with other requests) and draw one admitted request."""
    s = state.settings
    images = await asyncio.to_thread(_each_image, form.images, s.max_image_pixels, decode_image)
    decoded = time.perf_counter()
    n = len(images)
    try:
        scored = await state.batcher.submit(images, [form.category] * n, [form.threshold] * n)
    except QueueFull as exc:
        raise ApiError(503, f"server busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
    except BatcherClosed:
        raise ApiError(503, SHUTTING_DOWN) from None
    done = time.perf_counter()

    def render() -> list[dict[str, str]]:
        try:
            return [render_outputs(sc.result, form.outputs) for sc in scored]
        finally:
            if s.release_memory:
                release_free_memory()  # pictures are megabytes too, made in pool threads

    pictures = await asyncio.to_thread(render) if form.outputs else [{} for _ in scored]
    rendered = time.perf_counter()
    results = []
    for i, (sc, image, part, outs) in enumerate(zip(scored, images, form.images, pictures,
                                                    strict=True)):
        r = sc.result
        results.append({
            "index": i, "filename": part.filename or f"image {i}",
            "width": int(image.shape[1]), "height": int(image.shape[0]),
            "category": r.category, "score": _finite(r.score), "threshold": r.threshold,
            "threshold_source": r.threshold_source, "anomalous": r.anomalous,
            "normalised_score": _finite(r.normalised_score), "outputs": outs,
            "timing": {"batch_size": sc.batch_size, "queue_ms": round(sc.queue_ms, 3),
                       "score_ms": round(sc.score_ms, 3)},
        })
    return {"results": results, "timing": {
        "decode_ms": round((decoded - tic) * 1000, 3),
        "queue_ms": round(max(sc.queue_ms for sc in scored), 3),
        "score_ms": round(max(sc.score_ms for sc in scored), 3),
        "render_ms": round((rendered - done) * 1000, 3),
        "total_ms": round((rendered - tic) * 1000, 3),
    }}
