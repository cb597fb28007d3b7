"""Shared pieces of the serve tests: one tiny run trained with the CLI, and a real uvicorn server
on a loopback port in a background thread. (No tests here; imported by tests/test_serve_*.py.)"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from refad.data import make_demo_dataset
from refad.serve.app import create_app
from refad.serve.backend import Backend
from refad.serve.settings import Settings

_CACHE: dict[str, Path] = {}


def tiny_run(factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(demo data root, run folder): trained once per session with ``refad train``."""
    if "run" not in _CACHE:
        base = factory.mktemp("serve")
        demo = base / "demo"
        make_demo_dataset(demo, size=64, seed=0, n_train=8, n_test_good=2, n_test_defect=2)
        run = base / "run"
        cmd = [sys.executable, "-m", "refad", "train", "--data", "mvtec", "--root", str(demo),
               "--backbone", "tf_efficientnet_lite0", "--weights", "none", "--image-size", "64",
               "--epochs", "1", "--batch-size", "4", "--no-progress", "--out", str(run)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"refad train failed:\n{done.stdout}\n{done.stderr}"
        _CACHE["demo"], _CACHE["run"] = demo, run
    return _CACHE["demo"], _CACHE["run"]


def torch_factory(run: Path) -> Callable[[], Backend]:
    def make() -> Backend:
        from refad.serve.torch_backend import TorchBackend

        return TorchBackend(run, "cpu")

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving ``create_app(factory, settings)`` on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, factory: Callable[[], Backend], settings: Settings | None = None) -> None:
        self.app = create_app(factory, settings or Settings())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            if self.app.state.serve.load_error:
                raise RuntimeError(f"model failed to load: {self.app.state.serve.load_error}")
            time.sleep(0.05)
        raise TimeoutError(f"server not {path} after {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@contextlib.contextmanager
def live_server(factory: Callable[[], Backend], settings: Settings | None = None,
                wait_ready: bool = True) -> Iterator[LiveServer]:
    server = LiveServer(factory, settings).start(wait_ready)
    try:
        yield server
    finally:
        server.stop()


def png_bytes(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def demo_images(demo: Path, category: str = "fabric") -> tuple[Path, Path]:
    """(a normal test image, a defective one) of the demo data."""
    good = sorted((demo / category / "test" / "good").glob("*.png"))[0]
    bad = sorted(p for p in (demo / category / "test").rglob("*.png") if p.parent.name != "good")
    return good, bad[0]


def artifacts_dir(tmp: Path) -> Path:
    """Where files for a human go: $REFAD_ARTIFACTS if set, else the test's tmp folder."""
    out = Path(os.environ.get("REFAD_ARTIFACTS") or tmp)
    out.mkdir(parents=True, exist_ok=True)
    return out
