"""The server hands freed batch memory back, so activations do not stay resident.

Each scenario runs in a fresh Python (the allocator's state is process-wide) and allocates
through the C library directly, the way PyTorch's CPU allocator does: the figures are glibc's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_serve_support import live_server, tiny_run, torch_factory

from refad.pipeline import render
from refad.serve import app as serve_app
from refad.serve.memory import release_free_memory
from refad.serve.settings import Settings

# 1. one large block mapped and freed: glibc raises its mmap threshold to that size;
# 2. 40 blocks of 8 MiB (320 MiB, touched) then come from the heap, a small block is pinned
#    above them, and all 40 are freed. Without a remedy those pages stay resident.
SCENARIO = """
import ctypes, ctypes.util, json, sys
from pathlib import Path
from refad.serve.memory import release_free_memory

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
mode = sys.argv[1]
libc.free(libc.malloc(16 << 20))
before = rss_mb()
blocks = [libc.malloc(8 << 20) for _ in range(40)]
for b in blocks:
    ctypes.memset(b, 1, 8 << 20)
pin = libc.malloc(512 << 10)
peak = rss_mb()
for b in blocks:
    libc.free(b)
if mode == "trimmed":
    assert release_free_memory()
print(json.dumps({"peak": peak - before, "kept": rss_mb() - before}))
"""


def _scenario(mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", SCENARIO, mode], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


def test_default_allocator_keeps_freed_activations_resident():
    """The control: the scenario reproduces the growth the remedies must remove."""
    figures = _scenario("default")
    assert figures["peak"] > 300
    assert figures["kept"] > 250


def test_release_free_memory_returns_heap_pages():
    figures = _scenario("trimmed")
    assert figures["peak"] > 300  # the memory was really used...
    assert figures["kept"] < 20  # ...and left once trimmed


def test_release_reports_whether_anything_was_returned():
    assert isinstance(release_free_memory(), bool)


class _CountingBackend:
    def __init__(self) -> None:
        self.calls = 0

    def info(self):
        return {"categories": []}

    def warmup(self, batch_size: int = 1) -> list:
        return []

    def predict_batch(self, images, categories, thresholds):
        self.calls += 1
        raise RuntimeError("scoring failed")


def test_app_releases_memory_after_every_batch_even_when_scoring_fails(monkeypatch):
    released = []
    monkeypatch.setattr(serve_app, "release_free_memory", lambda: released.append(1) or True)
    backend = _CountingBackend()
    for release, expected in ((True, 3), (False, 0)):
        released.clear()
        app = serve_app.create_app(lambda: backend, Settings(warmup=False, release_memory=release))
        app.state.serve.backend = backend
        for _ in range(3):
            with pytest.raises(RuntimeError, match="scoring failed"):
                app.state.serve.batcher._predict([], [], [])
        assert len(released) == expected
    assert backend.calls == 6


def test_warm_up_renders_pictures_before_the_server_is_ready(tmp_path_factory):
    """The first request asking for a heatmap must not be the one that loads matplotlib's
    colour maps (about 30 MB that then looked like growth under load)."""
    _, run = tiny_run(tmp_path_factory)
    render._lookup_table.cache_clear()
    with live_server(torch_factory(run)):
        assert render._lookup_table.cache_info().currsize == 1  # no request was made
