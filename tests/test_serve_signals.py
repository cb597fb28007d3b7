"""`refad serve` stopped by signals, as a real process: while the model loads, and twice (a
forced stop) while a request is being scored. Each must end promptly, with no C++ abort, no
traceback in the log, and every in-flight request answered (its result, or a 503 in JSON)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from test_serve_support import free_port, png_bytes, tiny_run

from refad.serve.app import create_app
from refad.serve.settings import Settings

# `refad serve` through the program's own entry point (`refad.cli.main.main`), with the backend
# slowed down by native work on torch's intra-op threads (as loading or scoring a large model
# is), so that a signal lands while a thread is inside torch. A marker file says when.
LAUNCHER = r"""
import sys, time
from pathlib import Path
import torch
from refad.serve import torch_backend

slow, marker = sys.argv[1], Path(sys.argv[2])
real_init = torch_backend.TorchBackend.__init__
real_predict = torch_backend.TorchBackend.predict_batch

def busy(seconds):
    a = torch.rand(384, 384)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)

def slow_init(self, *args, **kwargs):
    if slow == "load":
        marker.touch()
        busy(300)
    real_init(self, *args, **kwargs)

def slow_predict(self, images, categories, thresholds):
    if slow == "score" and images and images[0].shape[0] == 33:  # the test's marker image
        marker.touch()
        busy(4)
    return real_predict(self, images, categories, thresholds)

torch_backend.TorchBackend.__init__ = slow_init
torch_backend.TorchBackend.predict_batch = slow_predict
from refad.cli.main import main
sys.argv = ["refad", *sys.argv[3:]]
main()
"""

STARTUP_S = 180  # a busy 2-core machine takes long to import torch and load the model
EXIT_S = 30  # "promptly": far less than the slowed-down load or a drain would take


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)[1]


class Served:
    """One `refad serve` process on a free loopback port, its output collected."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.out = ""
        self.err = ""

    def wait_for(self, path: str, status: int, port: int, timeout: float = STARTUP_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.finish()
            assert time.monotonic() < deadline, f"no {status} from {path} in {timeout} s"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == status:
                    return
            time.sleep(0.1)

    def finish(self, timeout: float = EXIT_S) -> str:
        """Wait for the exit; the whole stderr (the log)."""
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()
            pytest.fail(f"still running {timeout} s after the signal:\n{self.err[-3000:]}")
        return self.err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def launcher(slow: str, marker: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, slow, str(marker), "serve", *args]


def wait_for_file(path: Path, served: Served, timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert served.proc.poll() is None, served.finish()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def assert_clean_exit(served: Served, log: str) -> None:
    assert "terminate called" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert served.proc.returncode == 0, (served.proc.returncode, log[-3000:])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_model_loads_exits_at_once_without_an_abort(run_dir, tmp_path, sig):
    """The loader thread is inside torch (a load that would take minutes): the process must
    not wait for it, and must not exit around it (before: `terminate called without an active
    exception`, killed by SIGABRT)."""
    port = free_port()
    marker = tmp_path / "loading"
    served = Served(launcher("load", marker, "--run", str(run_dir), "--device", "cpu",
                             "--port", str(port)))
    try:
        served.wait_for("/healthz", 200, port)
        wait_for_file(marker, served)
        time.sleep(0.5)  # well inside the native work
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 503
        os.kill(served.proc.pid, sig)
        tic = time.monotonic()
        log = served.finish()
        assert time.monotonic() - tic < EXIT_S
        assert_clean_exit(served, log)
        assert "while the model was loading" in log
    finally:
        served.kill()


@pytest.mark.parametrize("program", [["refad", "serve"], ["refad.serve"]])
def test_refad_serve_sigterm_soon_after_start_exits_cleanly(run_dir, program):
    """The plain commands: SIGTERM a moment after they answer, while they import torch and
    load the run (before: the abort, most of the time)."""
    port = free_port()
    served = Served([sys.executable, "-m", *program, "--run", str(run_dir),
                     "--device", "cpu", "--port", str(port)])
    try:
        served.wait_for("/healthz", 200, port)
        time.sleep(1.0)
        os.kill(served.proc.pid, signal.SIGTERM)
        assert_clean_exit(served, served.finish())
    finally:
        served.kill()


def test_two_ctrl_cs_with_a_request_in_flight_answer_it_and_exit_cleanly(run_dir, tmp_path):
    """A forced stop (the second Ctrl-C) while a request is being scored: the request gets its
    result or a 503 in JSON (before: a plain-text 500, and CancelledError tracebacks in the
    log), and the process exits 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    marker = tmp_path / "scoring"
    served = Served(launcher("score", marker, "--run", str(run_dir), "--device", "cpu",
                             "--port", str(port)))
    answer: dict[str, object] = {}

    def request() -> None:
        image = png_bytes(np.full((33, 40, 3), 128, np.uint8))
        try:
            answer["response"] = httpx.post(
                url + "/v1/predict", files=[("image", ("a.png", image, "image/png"))],
                timeout=STARTUP_S)
        except httpx.HTTPError as exc:
            answer["error"] = exc

    try:
        served.wait_for("/readyz", 200, port)
        client = threading.Thread(target=request, daemon=True)
        client.start()
        wait_for_file(marker, served, timeout=60)
        os.kill(served.proc.pid, signal.SIGINT)
        time.sleep(0.05)
        os.kill(served.proc.pid, signal.SIGINT)
        client.join(EXIT_S)
        log = served.finish()
        assert "response" in answer, answer
        response = answer["response"]
        assert isinstance(response, httpx.Response)
        assert response.status_code in (200, 503), (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        if response.status_code == 503:
            assert response.json() == {"error": "the server is shutting down"}
        else:
            assert len(response.json()["results"]) == 1
        assert_clean_exit(served, log)
    finally:
        served.kill()


class StuckBackend:
    """A backend whose scoring hangs until released (a batch far slower than the drain)."""

    def __init__(self) -> None:
        self.scoring = threading.Event()
        self.release = threading.Event()

    def info(self) -> dict[str, object]:
        return {"categories": [], "category_required": False}

    def warmup(self, batch_size: int = 1) -> list[object]:
        return []

    def predict_batch(self, images, categories, thresholds):  # noqa: ANN001 - the protocol's
        self.scoring.set()
        self.release.wait(120)
        raise RuntimeError("scored after the server stopped")


def test_a_drain_that_runs_out_answers_503_not_500(caplog):
    """SIGTERM's drain is bounded (``drain_seconds``); past it uvicorn cancels the requests.
    Before: each got a plain-text 500 and a CancelledError traceback in the log."""
    backend = StuckBackend()
    app = create_app(lambda: backend, Settings(warmup=False))  # type: ignore[arg-type,return-value]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "never ready"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(0.05)
        image = png_bytes(np.full((8, 8, 3), 128, np.uint8))
        answer: list[httpx.Response] = []
        client = threading.Thread(target=lambda: answer.append(httpx.post(
            url + "/v1/predict", files=[("image", ("a.png", image, "image/png"))], timeout=60)))
        client.start()
        assert backend.scoring.wait(60)
        server.should_exit = True  # what SIGTERM does
        client.join(60)
        assert answer, "no answer"
        assert answer[0].status_code == 503, answer[0].text
        assert answer[0].json() == {"error": "the server is shutting down"}
    finally:
        backend.release.set()
        server.should_exit = True
        thread.join(60)
        sock.close()
    assert not thread.is_alive()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
