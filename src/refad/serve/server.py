"""`refad serve`'s entry point: pick a backend, build the app, run uvicorn until SIGTERM/SIGINT.

On SIGTERM uvicorn stops accepting connections, lets in-flight requests finish (up to
``drain_seconds``), then the app stops its batcher and the process exits 0. A second Ctrl-C
forces the stop: requests still waiting or being scored answer 503 at once. A signal while the
model is still loading ends the process at once (the loading thread cannot be stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

import uvicorn

from refad.errors import ConfigError, RefadError
from refad.serve.app import create_app
from refad.serve.backend import Backend
from refad.serve.security import load_api_key
from refad.serve.settings import Settings

log = logging.getLogger("refad.serve")


def make_backend_factory(
    run_dir: Path | None, model_dir: Path | None, device: str = "auto"
) -> Callable[[], Backend]:
    """A factory for the backend of a run folder (PyTorch) or an exported folder.

    The exported-folder backend wraps the torch-free ``refad.deploy.Inferencer``
    (:mod:`refad.serve.deploy_backend`); neither backend's module is imported before it is used,
    so ``--model`` works in an install without torch.
    """
    if (run_dir is None) == (model_dir is None):
        raise ConfigError("serve: give exactly one of a run folder (--run) or an exported "
                          "folder (--model)")
    folder = Path(run_dir if run_dir is not None else model_dir)  # type: ignore[arg-type]
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    if run_dir is not None:
        from refad.device import resolve_device
        from refad.runs import check_scorable

        resolve_device(device)  # the cheap checks before binding: bad input exits 2, unbound
        check_scorable(folder)

        def torch_factory() -> Backend:
            from refad.serve.torch_backend import TorchBackend

            return TorchBackend(folder, device)

        return torch_factory
    from refad.deploy.metadata import read_metadata
    from refad.serve.deploy_backend import DeployBackend

    read_metadata(folder)

    def deploy_factory() -> Backend:
        return DeployBackend(folder, device)

    return deploy_factory


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening address, bound before anything starts: a taken port or an unknown host
    is a one-line error (exit 2), not a uvicorn log and exit 1 after the model has loaded."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: {port} is not a port (0-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host: cannot use {host!r} ({exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--host/--port: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, with its forced stop (a second Ctrl-C) made clean.

    uvicorn skips the app's shutdown on a forced stop, so the batcher's task and the lifespan
    were cancelled under the requests (a 500 for each, CancelledError tracebacks in the log).
    Here the app is still shut down, which fails the images still queued or being scored with
    a 503, and the requests get a moment to send those answers.
    """

    stopped_by_signal = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by_signal = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets=sockets)
        done = getattr(self.lifespan, "shutdown_event", None)  # None: lifespan="off"
        if not self.force_exit or done is None or done.is_set():
            return
        await self.lifespan.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while self.server_state.tasks and loop.time() < deadline:
            await asyncio.sleep(0.05)


def _exit_now(code: int) -> NoReturn:
    """End the process without finalising the interpreter. A thread inside torch or
    onnxruntime cannot be stopped, and an interpreter that exits around it aborts the process
    (`terminate called without an active exception`, SIGABRT) after the clean shutdown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _signals_end_quietly(server: uvicorn.Server):
    """Let a drained shutdown exit 0: uvicorn re-raises the SIGTERM/SIGINT it handled once it
    has shut down, which with the default handlers kills the process (or raises
    KeyboardInterrupt). With these handlers underneath, that re-raise is harmless, and a
    signal in the moment before uvicorn installs its own still stops the server."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True
        if isinstance(server, _Server):
            server.stopped_by_signal = True

    sigs = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, stop) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(
    run_dir: Path | None = None,
    model_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    api_key_file: Path | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    *,
    max_images: int = 64,
    max_body_mb: int = 64,
    max_image_pixels: int = 16_000_000,
    max_pixels_in_flight: int = 128_000_000,
    drain_seconds: int = 30,
    log_level: str = "info",
    backend_factory: Callable[[], Backend] | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Serve until stopped; returns the process exit code: 0, or if the model failed to load
    2 (a refused run or exported folder) or 1 (anything else, out of memory say).

    A signal (SIGTERM, Ctrl-C) that stops the server while the model is still loading ends the
    process at once with that code (``os._exit``): waiting could take minutes, and exiting
    normally around the loading thread aborts. Only the main thread receives signals, so a
    server run in another thread is never ended this way.

    The API key comes from ``api_key_file`` or $REFAD_API_KEY, never from an argument.
    ``backend_factory`` replaces ``run_dir``/``model_dir`` (embedding, tests); ``sock`` is an
    already bound socket to serve on instead of ``host``/``port``.
    """
    factory = backend_factory or make_backend_factory(
        Path(run_dir) if run_dir is not None else None,
        Path(model_dir) if model_dir is not None else None, device)
    settings = Settings(
        max_batch=max_batch, max_wait_ms=max_wait_ms, max_images=max_images,
        max_body_bytes=max_body_mb * 1024 * 1024, max_image_pixels=max_image_pixels,
        max_pixels_in_flight=max_pixels_in_flight,
        api_key=load_api_key(Path(api_key_file) if api_key_file is not None else None),
    )
    owned = sock is None
    sock = sock if sock is not None else bind_socket(host, port)
    if owned and not _is_loopback(host) and settings.api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach it can use it "
                    "(set --api-key-file or REFAD_API_KEY)", host)
    exit_code = [0]
    server: uvicorn.Server | None = None

    def on_load_error(exc: BaseException) -> None:
        exit_code[0] = 2 if isinstance(exc, RefadError) else 1
        if server is not None:
            server.should_exit = True

    app = create_app(factory, settings, on_load_error)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
        timeout_graceful_shutdown=drain_seconds, lifespan="on", proxy_headers=False,
        limit_concurrency=1024,
    )
    server = _Server(config)
    if owned:  # uvicorn announces only addresses it bound itself
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
        logging.getLogger("uvicorn.error").info("listening on http://%s:%d", shown, bound[1])
    try:
        with _signals_end_quietly(server):
            server.run(sockets=[sock])
    finally:
        if owned:
            sock.close()
    if not server.started and exit_code[0] == 0:
        exit_code[0] = 1  # start-up failed (uvicorn has logged why)
    if app.state.serve.loading:
        logging.getLogger("uvicorn.error").info(
            "stopped while the model was loading; the load is abandoned")
        if server.stopped_by_signal:
            _exit_now(exit_code[0])
    return exit_code[0]
