"""The HTTP API against a real uvicorn server on a loopback port, with a real trained tiny run."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request
from test_serve_support import (
    demo_images,
    free_port,
    live_server,
    png_bytes,
    tiny_run,
    torch_factory,
)
from typer.testing import CliRunner

from refad.cli.main import app
from refad.errors import ConfigError, RefadError
from refad.pipeline.calibration import Calibration, Values
from refad.pipeline.decision import decide
from refad.serve.backend import Backend, check_category, request_thresholds, threshold_card
from refad.serve.errors import ApiError
from refad.serve.limits import PixelBudget, read_body
from refad.serve.security import load_api_key
from refad.serve.server import run_server
from refad.serve.settings import Settings

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def run_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def shared_backend(run_paths: tuple[Path, Path]) -> Backend:
    """One loaded model reused by the servers below (each test server still runs the real app)."""
    backend = torch_factory(run_paths[1])()
    backend.warmup()
    return backend


@pytest.fixture(scope="module")
def server(shared_backend: Backend):
    calls: list[int] = []

    def factory() -> Backend:
        calls.append(1)
        return shared_backend

    with live_server(factory, Settings(max_batch=8, max_wait_ms=30)) as s:
        s.factory_calls = calls
        yield s


@pytest.fixture(scope="module")
def small(shared_backend: Backend):
    limits = Settings(max_body_bytes=200_000, max_images=2, max_image_pixels=100 * 100,
                      max_pixels_in_flight=12_000)
    with live_server(lambda: shared_backend, limits) as s:
        yield s


@pytest.fixture(scope="module")
def keyed(shared_backend: Backend):
    with live_server(lambda: shared_backend, Settings(api_key=KEY)) as s:
        yield s


def post(url: str, files: list[tuple[str, bytes]], **data: str) -> httpx.Response:
    parts = [("image", (name, content, "application/octet-stream")) for name, content in files]
    return httpx.post(url + "/v1/predict", files=parts, data=data, timeout=60)


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


def b64_image(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


# ---- health, model card, metrics -----------------------------------------------------------

def test_health_ready_and_model_card(server, run_paths):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    card = httpx.get(server.url + "/v1/model").json()
    assert card["method"] == "rlr" and card["backbone"] == "tf_efficientnet_lite0"
    assert card["input_size"] == 64 and card["mode"] == "unified" and card["backend"] == "torch"
    assert card["categories"] == ["fabric", "mesh", "screw"] and not card["category_required"]
    from refad.runs import open_run

    calib = open_run(run_paths[1], "cpu").model("unified")[1].calibration
    assert card["thresholds"]["global"] == pytest.approx(calib["threshold"])
    assert card["thresholds"]["categories"] == pytest.approx(
        {c: v["threshold"] for c, v in calib["categories"].items()})
    assert card["refad_version"] and card["run"] == "run"  # a folder name, never a path
    assert str(run_paths[1]) not in json.dumps(card)
    assert card["limits"]["max_batch"] == 8 and card["api_key_required"] is False
    assert card["scored_with"] == "pytorch on cpu"
    assert server.factory_calls == [1]  # one model, whatever the number of connections


def test_openapi_schema_is_published(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    form = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form


def test_metrics_count_requests_errors_and_batches(server, run_paths):
    good, _ = demo_images(run_paths[0])
    assert post(server.url, [("a.png", good.read_bytes())]).status_code == 200
    httpx.get(server.url + "/nope")
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'refad_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'refad_http_errors_total{route="other",status="404"}' in text
    assert "refad_http_request_seconds_bucket" in text
    assert "refad_batch_size_count" in text and "refad_model_ready 1.0" in text


# ---- predictions -----------------------------------------------------------------------------

def test_predict_matches_refad_predict(server, run_paths, tmp_path):
    from refad.api import predict

    demo, run = run_paths
    good, bad = demo_images(demo)
    r = post(server.url, [(good.name, good.read_bytes()), (bad.name, bad.read_bytes())],
             category="fabric")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predict(run, [good, bad], tmp_path / "pred", device="cpu",
                       category="fabric").predictions
    assert [x["filename"] for x in body["results"]] == [good.name, bad.name]
    for got, want in zip(body["results"], expected, strict=True):
        assert got["score"] == pytest.approx(want.score, rel=1e-4)
        assert got["anomalous"] == want.anomalous
        assert got["normalised_score"] == pytest.approx(want.normalised_score, rel=1e-4)
        assert got["category"] == "fabric" and got["threshold_source"] == "category:fabric"
        assert got["threshold"] == pytest.approx(want.threshold)
        assert got["anomalous"] == (got["score"] > got["threshold"])
        assert got["outputs"] == {}
        assert got["timing"]["batch_size"] >= 2
    assert set(body["timing"]) == {"decode_ms", "queue_ms", "score_ms", "render_ms", "total_ms"}


def test_outputs_are_pngs_at_image_size(server):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)  # not square, not 64 px
    r = post(server.url, [("x.png", png_bytes(image))], outputs="heatmap,overlay, MASK")
    assert r.status_code == 200, r.text
    out = r.json()["results"][0]
    assert (out["width"], out["height"]) == (80, 48)
    heat, over, mask = (b64_image(out["outputs"][k]) for k in ("heatmap", "overlay", "mask"))
    assert heat.shape == over.shape == (48, 80, 3) and mask.shape == (48, 80)
    assert set(np.unique(mask)) <= {0, 255}
    none = post(server.url, [("x.png", png_bytes(image))], outputs="none").json()
    assert none["results"][0]["outputs"] == {}


def test_request_threshold_overrides_and_redecides(server, run_paths):
    good, _ = demo_images(run_paths[0])
    score = post(server.url, [("g.png", good.read_bytes())]).json()["results"][0]["score"]
    low = post(server.url, [("g.png", good.read_bytes())], threshold=str(score / 2)).json()
    high = post(server.url, [("g.png", good.read_bytes())], threshold=str(score * 2)).json()
    lo, hi = low["results"][0], high["results"][0]
    assert lo["threshold_source"] == hi["threshold_source"] == "request"
    assert lo["anomalous"] is True and hi["anomalous"] is False
    assert lo["normalised_score"] == pytest.approx(2.0, rel=1e-5)


def test_image_modes_decoded_like_refad(server):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    grey = rng.integers(0, 255, (40, 40), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((40, 40), 7, np.uint8)])
    files = [("rgb.jpg", png_bytes(rgb, "JPEG")), ("grey.png", png_bytes(grey)),
             ("rgba.png", png_bytes(rgba)), ("bmp-content.png", png_bytes(rgb, "BMP")),
             ("rgb.tif", png_bytes(rgb, "TIFF"))]
    r = post(server.url, files)
    assert r.status_code == 200, r.text
    scores = [x["score"] for x in r.json()["results"]]
    assert all(np.isfinite(scores))
    # alpha dropped, colour kept: same pixels as the RGB PNG -> same score
    same = post(server.url, [("rgb.png", png_bytes(rgb))]).json()["results"][0]["score"]
    assert scores[2] == pytest.approx(same, rel=1e-5)
    assert scores[3] == pytest.approx(same, rel=1e-5) and scores[4] == pytest.approx(same, rel=1e-5)


def test_concurrent_requests_are_batched(server, run_paths):
    good, _ = demo_images(run_paths[0])
    data = good.read_bytes()
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: post(server.url, [("g.png", data)]), range(24)))
    assert all(r.status_code == 200 for r in responses)
    sizes = [r.json()["results"][0]["timing"]["batch_size"] for r in responses]
    assert max(sizes) > 1 and max(sizes) <= 8, sizes
    scores = {round(r.json()["results"][0]["score"], 5) for r in responses}
    assert len(scores) == 1  # batching does not change a score


# ---- bad requests: always a 4xx with {"error": ...} ------------------------------------------

def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with a tiny (wrong) data stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_bad_requests(server, run_paths):
    good, _ = demo_images(run_paths[0])
    img = good.read_bytes()
    url = server.url
    assert_error(httpx.post(url + "/v1/predict", json={"image": "x"}), 415, "multipart")
    assert_error(httpx.post(url + "/v1/predict", content=b""), 415)
    assert_error(httpx.post(url + "/v1/predict", files={"category": (None, "fabric")}), 400,
                 "no image")
    assert_error(post(url, [("a.png", img)], colour="red"), 400, "unknown form field")
    assert_error(post(url, [("a.png", img)], threshold="abc"), 400, "threshold")
    for bad in ("-1", "0", "nan", "inf"):
        assert_error(post(url, [("a.png", img)], threshold=bad), 400, "threshold")
    assert_error(post(url, [("a.png", img)], outputs="heatmap,xray"), 400, "xray")
    assert_error(post(url, [("a.png", img)], category="wood"), 400, "unknown category", "fabric")
    assert_error(post(url, [("a.png", img)], category="x" * 500), 400, "category")
    # `-F category=$CAT` with CAT unset: the global threshold decided, as if none was named
    assert_error(post(url, [("a.png", img)], category=""), 400, "category is empty")
    assert_error(post(url, [("a.png", img)], threshold=""), 400, "threshold is empty")
    assert_error(post(url, [("notes.txt", b"hello world")]), 415, "notes.txt", "not an image")
    assert_error(post(url, [("empty.png", b"")]), 400, "empty")
    assert_error(post(url, [("cut.png", img[: len(img) // 2])]), 400, "cut.png")
    assert_error(post(url, [("bomb.png", bomb_png(100_000, 100_000))]), 413, "pixels")
    float_img = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(float_img, format="TIFF")
    assert_error(post(url, [("f.tif", float_img.getvalue())]), 400, "mode F")
    boundary = "b0undary"
    broken = f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc"
    assert_error(httpx.post(url + "/v1/predict", content=broken.encode(),
                            headers={"content-type": f"multipart/form-data; boundary={boundary}"}),
                 400, "multipart")
    assert_error(httpx.get(url + "/v1/predict"), 405, "not allowed")
    assert_error(httpx.get(url + "/etc/passwd"), 404, "no such endpoint")
    assert_error(httpx.get(url + "/static/../../etc/passwd"), 404)
    assert_error(httpx.get(url + "/static/index.html"), 404)  # only the three page files exist
    # the server is still healthy after all that
    assert post(url, [("a.png", img)]).status_code == 200


def test_size_limits(small, run_paths):
    good, _ = demo_images(run_paths[0])
    img = good.read_bytes()
    url = small.url
    assert_error(post(url, [("a.png", img)] * 3), 413, "3 images", "limit is 2")
    assert_error(post(url, [("big.bin", os.urandom(300_000))]), 413, "limit")
    big = png_bytes(np.zeros((101, 100, 3), np.uint8))
    assert_error(post(url, [("big.png", big)]), 413, "100x101", "10000")

    def chunked():  # no Content-Length: the limit holds while streaming
        yield b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"
        for _ in range(30):
            yield b"\0" * 10_000
    r = httpx.post(url + "/v1/predict", content=chunked(),
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 413, "limit")
    # more parts than the parser collects: the image limit's 413, not a 400 about form fields
    assert_error(post(url, [("a.png", img)] * 11), 413, "limit is 2 images")
    assert post(url, [("a.png", img)] * 2).status_code == 200


def test_pixels_in_flight_bound_each_request_and_are_given_back(small):
    square = png_bytes(np.full((100, 100, 3), 90, np.uint8))  # 10,000 pixels, within the image
    url = small.url                                          # limit; the budget is 12,000
    assert_error(post(url, [("a.png", square), ("b.png", square)]), 413,
                 "20000 pixels in one request", "12000")
    for _ in range(2):  # admitted on its header, fails while decoding: its pixels come back
        assert_error(post(url, [("cut.png", square[: len(square) // 2])]), 400, "cut.png")
    assert post(url, [("a.png", square)]).status_code == 200
    assert httpx.get(url + "/v1/model").json()["limits"]["max_pixels_in_flight"] == 12_000


def test_pixel_budget_refuses_what_would_pass_it_and_releases_on_error():
    budget = PixelBudget(10)
    with pytest.raises(ApiError) as too_big:
        budget.reserve(11).__enter__()
    assert too_big.value.status == 413
    with budget.reserve(8):
        assert budget.in_use == 8
        with pytest.raises(ApiError) as busy, budget.reserve(3):
            pass
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
    with pytest.raises(RuntimeError), budget.reserve(10):
        raise RuntimeError("scoring failed")
    assert budget.in_use == 0
    with pytest.raises(ConfigError, match="max_pixels_in_flight"):
        Settings(max_image_pixels=100, max_pixels_in_flight=50)


def test_client_gone_mid_body_is_a_client_error_not_a_500(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\nabc")
        time.sleep(0.3)  # the app is now reading the body
    wanted = 'refad_http_errors_total{route="/v1/predict",status="400"}'
    deadline = time.monotonic() + 10
    while wanted not in (text := httpx.get(server.url + "/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    assert 'status="500"' not in text


def test_read_body_turns_a_disconnect_into_a_400():
    messages = [{"type": "http.request", "body": b"abc", "more_body": True},
                {"type": "http.disconnect"}]

    async def receive() -> dict:
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(ApiError) as gone:
        asyncio.run(read_body(request, 1000))
    assert gone.value.status == 400 and "disconnected after 3 bytes" in gone.value.message


# ---- API key ---------------------------------------------------------------------------------

def test_api_key_required_except_health(keyed, run_paths):
    good, _ = demo_images(run_paths[0])
    url = keyed.url
    for path in ("/v1/model", "/metrics", "/openapi.json"):
        assert_error(httpx.get(url + path), 401, "missing API key")
        assert_error(httpx.get(url + path, headers={"X-API-Key": "wrong"}), 401, "wrong API key")
        assert httpx.get(url + path, headers={"X-API-Key": KEY}).status_code == 200
        assert httpx.get(url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert_error(post(url, [("a.png", good.read_bytes())]), 401)
    r = httpx.post(url + "/v1/predict", headers={"X-API-Key": KEY}, timeout=60,
                   files=[("image", ("a.png", good.read_bytes()))])
    assert r.status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    assert httpx.get(url + "/").status_code == 200  # the page holds no data; it asks for the key


def test_api_key_sources(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("  from-file \n")
    assert load_api_key(key_file, env={"REFAD_API_KEY": "from-env"}) == "from-file"
    assert load_api_key(None, env={"REFAD_API_KEY": " from-env "}) == "from-env"
    assert load_api_key(None, env={}) is None
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_api_key(key_file, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_api_key(tmp_path / "absent", env={})


# ---- threshold rules (shared by every backend) ---------------------------------------------

def test_threshold_rules():
    """Which threshold decides (the unit's typed calibration, a request's own first), and the
    model card that lists them."""
    def rule(calibration, category, requested=None):
        applied = request_thresholds(calibration.for_category(category), requested)
        return applied.threshold, applied.source

    per_cat = {"categories": ["a", "b"], "category_required": True,
               "thresholds": {"global": None, "categories": {"a": 2.0}}}
    units = {"a": Calibration(Values(threshold=2.0), unit_category="a"),
             "b": Calibration(unit_category="b")}
    assert threshold_card(units) == per_cat["thresholds"]
    assert rule(units["a"], "a") == (2.0, "category:a")
    assert rule(units["a"], "a", 5.0) == (5.0, "request")
    assert rule(units["b"], "b") == (None, None)
    unified = {"categories": [], "thresholds": {"global": 1.0, "categories": {}}}
    assert threshold_card({"unified": Calibration(Values(threshold=1.0))}) == unified["thresholds"]
    assert rule(Calibration(Values(threshold=1.0)), "anything") == (1.0, "global")
    check_category(unified, "anything")  # no list: any category is a label
    with pytest.raises(ValueError, match="name the category"):
        check_category(per_cat, None)
    with pytest.raises(ValueError, match="unknown category"):
        check_category(per_cat, "c")
    assert decide(3.0, 2.0) == (True, 1.5)
    assert decide(2.0, 2.0) == (False, 1.0)  # strictly greater, as `refad predict`
    assert decide(float("nan"), 2.0) == (None, None)
    assert decide(1.0, None) == (None, None)


# ---- loading, load failure, SIGTERM ---------------------------------------------------------

def test_503_while_loading_then_ready(run_paths):
    gate = threading.Event()
    real = torch_factory(run_paths[1])

    def slow_factory() -> Backend:
        gate.wait(30)
        return real()

    good, _ = demo_images(run_paths[0])
    with live_server(slow_factory, wait_ready=False) as s:
        tic = time.monotonic()
        assert httpx.get(s.url + "/healthz").status_code == 200
        assert_error(httpx.get(s.url + "/readyz", timeout=5), 503, "loading")
        assert_error(httpx.get(s.url + "/v1/model", timeout=5), 503, "loading")
        r = post(s.url, [("a.png", good.read_bytes())])
        assert_error(r, 503, "loading")
        assert r.headers["retry-after"] == "1"
        assert time.monotonic() - tic < 5  # answered, not hung
        assert "refad_model_ready 0.0" in httpx.get(s.url + "/metrics").text
        gate.set()
        deadline = time.monotonic() + 60
        while httpx.get(s.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert post(s.url, [("a.png", good.read_bytes())]).status_code == 200


def test_load_failure_is_reported(tmp_path):
    def broken() -> Backend:
        raise RuntimeError("checkpoint is corrupt")

    with live_server(broken, wait_ready=False) as s:
        deadline = time.monotonic() + 10
        while not s.app.state.serve.load_error:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert_error(httpx.get(s.url + "/readyz"), 503, "failed to load", "corrupt")


def serve_until_it_gives_up(**kwargs) -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(run_server, sock=sock, log_level="critical", **kwargs).result(60)
    finally:
        sock.close()


def test_a_model_that_cannot_load_ends_the_server(run_paths, tmp_path):
    # a refused run folder (bad input) exits 2; any other failure (memory, say) exits 1
    bad = tmp_path / "run"
    shutil.copytree(run_paths[1], bad)
    next(bad.glob("model-*.safetensors")).write_bytes(b"junk")
    assert serve_until_it_gives_up(run_dir=bad, device="cpu") == 2

    def out_of_memory() -> Backend:
        raise MemoryError

    assert serve_until_it_gives_up(backend_factory=out_of_memory) == 1


def test_a_folder_that_is_no_run_is_refused_before_binding(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefadError, match="empty: not a refad run folder"):
        run_server(tmp_path / "empty", port=free_port())


@pytest.mark.parametrize("args, expected", [
    (["--port", "-1"], "--port: -1 is not a port"),
    (["--port", "70000"], "--port: 70000 is not a port"),
    (["--host", "no-such-host.invalid"], "--host: cannot use 'no-such-host.invalid'"),
    (["--port", "TAKEN"], "cannot listen on 127.0.0.1:TAKEN"),
    (["--device", "mps"], "device: 'mps' is not supported"),
])
def test_serve_refuses_bad_addresses_in_one_line_before_loading(run_paths, args, expected):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [a.replace("TAKEN", port) for a in args]
        result = CliRunner().invoke(app, ["serve", "--run", str(run_paths[1]), *args])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert expected.replace("TAKEN", port) in lines[0]


SLOW_SERVER = """
import sys, time
from pathlib import Path
from refad.serve.server import run_server
from refad.serve.torch_backend import TorchBackend

class Slow(TorchBackend):
    def predict_batch(self, images, categories, thresholds):
        if images and images[0].shape[0] == 33:  # the test's marker image
            time.sleep(2.0)
        return super().predict_batch(images, categories, thresholds)

sys.exit(run_server(port=int(sys.argv[2]), backend_factory=lambda: Slow(Path(sys.argv[1]), "cpu"),
                    log_level="warning"))
"""


def test_sigterm_drains_in_flight_requests(run_paths):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(run_paths[1]), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "server never became ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        marker = png_bytes(np.full((33, 40, 3), 128, np.uint8))
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, url, [("slow.png", marker)])
            time.sleep(0.7)  # the request is being scored now
            proc.send_signal(signal.SIGTERM)
            response = pending.result(timeout=30)
        assert response.status_code == 200, response.text
        assert proc.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exported_folder_backend_matches_the_run(server, run_paths, tmp_path):
    """--model: the torch-free Inferencer behind the same API gives the run's scores."""
    import refad.export as export
    from refad.serve.server import make_backend_factory
    from refad.serve.torch_backend import open_run  # wherever the integrator points it

    demo, run_dir = run_paths
    good, bad = demo_images(demo)
    run = open_run(run_dir, "cpu")
    model, meta = run.model("unified")
    check = [np.asarray(Image.open(good).convert("RGB"))]
    export.export_model(run.extractor, {"unified": model}, {"unified": meta.calibration},
                        {"method": run.config.method, "mode": "unified"}, tmp_path / "onnx",
                        check_images=check)
    files = [(good.name, good.read_bytes()), (bad.name, bad.read_bytes())]
    want = post(server.url, files).json()["results"]
    with live_server(make_backend_factory(None, tmp_path / "onnx", "cpu")) as s:
        card = httpx.get(s.url + "/v1/model").json()
        assert card["backend"] == "deploy:onnxruntime" and card["method"] == "rlr"
        assert card["scored_with"] == "onnxruntime, fp32 export, f32 arithmetic on cpu"
        got = post(s.url, files, outputs="heatmap,mask").json()["results"]
        assert post(s.url, files[:1], threshold="1e-9").json()["results"][0][
            "threshold_source"] == "request"
    for g, w in zip(got, want, strict=True):
        assert g["score"] == pytest.approx(w["score"], rel=1e-3)
        assert g["anomalous"] == w["anomalous"] and g["threshold_source"] == "global"
        assert set(g["outputs"]) == {"heatmap", "mask"}


def test_warmup_scores_the_largest_batch_before_ready(shared_backend):
    """The server takes the memory of its largest batch before it says ready: warm-up scores
    `max_batch` images at once (and its pictures are rendered from those results)."""
    seen: list[int] = []

    class Spy:
        def __getattr__(self, name):
            return getattr(shared_backend, name)

        def warmup(self, batch_size: int = 1):
            seen.append(batch_size)
            return shared_backend.warmup(batch_size)

    with live_server(lambda: Spy(), Settings(max_batch=5)) as s:
        assert httpx.get(s.url + "/readyz").json() == {"status": "ready"}
    assert seen == [5]


def test_torch_backend_warmup_scores_a_full_batch(shared_backend, monkeypatch):
    sizes: list[int] = []
    real = shared_backend.predict_batch

    def counting(images, categories, thresholds):
        sizes.append(len(images))
        return real(images, categories, thresholds)

    monkeypatch.setattr(shared_backend, "predict_batch", counting)
    shared_backend.warmup(3)
    assert sizes == [3]


# ---- the torch backend decides as `refad predict --run` does ------------------------------

def _edited_copy(run: Path, target: Path, edit) -> Path:
    shutil.copytree(run, target)
    manifest = target / "unified" / "checkpoint.json"
    if not manifest.exists():
        manifest = target / "checkpoint.json"
    data = json.loads(manifest.read_text())
    edit(data)
    manifest.write_text(json.dumps(data))
    return target


def test_categories_come_from_the_calibration_not_the_training_data(trained_run, tmp_path):
    """The list of categories was read from the training data: served from another working
    directory, or on a machine without the data, it was empty, and a mistyped category
    ('Fabric') was decided at the global threshold instead of refused."""
    from refad.runs import open_run
    from refad.serve.backend import RequestError
    from refad.serve.torch_backend import TorchBackend

    meta = open_run(trained_run, "cpu").model("unified")[1]
    calibrated = meta.unit_calibration("unified").known_categories
    assert calibrated
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["root"] = str(tmp_path / "elsewhere")  # the serving machine has no data
    (run / "config.json").write_text(json.dumps(config))
    backend = TorchBackend(run, "cpu")
    assert backend.info()["categories"] == calibrated
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(RequestError, match="unknown category 'Fabric'"):
        backend.predict_batch([image], ["Fabric"], [None])
    (result,) = backend.predict_batch([image], [calibrated[0]], [None])
    assert result.threshold_source == f"category:{calibrated[0]}"


def test_an_uncalibrated_run_gets_no_invented_mask(trained_run, tmp_path):
    """Without calibration, serve called the upper half of each map's own range a defect (most
    of the image), where `refad predict` and the exported model give no mask."""
    from refad.serve.pictures import render_outputs
    from refad.serve.torch_backend import TorchBackend

    run = _edited_copy(trained_run, tmp_path / "run", lambda d: d.update(calibration=None))
    backend = TorchBackend(run, "cpu")
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    (result,) = backend.predict_batch([image], [None], [None])
    assert result.threshold is None and result.anomalous is None and result.mask is None
    assert render_outputs(result, ("overlay", "mask"))["mask"] is None
    with_threshold = backend.predict_batch([image], [None], [1.0])[0]
    assert with_threshold.anomalous is not None and with_threshold.mask is None


def test_a_per_category_run_of_one_category_needs_no_category(demo_root, tmp_path):
    """`refad predict --run` demanded --category of a per-category run with one product, while
    its export (and `serve --model`) scored with the only model; both now do the latter."""
    from conftest import tiny_config

    from refad.reporting.predictions import predict
    from refad.serve.torch_backend import TorchBackend
    from refad.training import fit

    run = tmp_path / "one"
    fit(tiny_config(demo_root, "train.mode=per-category", "data.categories=[\"fabric\"]",
                    epochs=1), run, progress=False)
    report = predict(run, [demo_root / "fabric" / "test"], tmp_path / "p", device="cpu")
    assert report.predictions and not report.failures
    assert {p.threshold_source for p in report.predictions} == {"category:fabric"}
    backend = TorchBackend(run, "cpu")
    assert backend.info()["category_required"] is False
    image = np.zeros((64, 64, 3), np.uint8)
    (alone,) = backend.predict_batch([image], [None], [None])
    (named,) = backend.predict_batch([image], ["fabric"], [None])
    assert alone.threshold_source == named.threshold_source == "category:fabric"
    assert alone.category == named.category == "fabric"  # the answer said null
    assert alone.score == named.score and alone.threshold == named.threshold
    # its export served answers alike: the same category, thresholds and sources
    from refad.export.from_run import export_run
    from refad.serve.deploy_backend import DeployBackend

    export_run(run, tmp_path / "onnx")
    deployed = DeployBackend(tmp_path / "onnx", "cpu")
    (exported,) = deployed.predict_batch([image], [None], [None])
    assert (exported.category, exported.threshold_source, exported.anomalous) == (
        "fabric", "category:fabric", alone.anomalous)
    assert exported.score == pytest.approx(alone.score, rel=1e-5)
    asked = [b.predict_batch([image], [None], [alone.score / 2])[0] for b in (backend, deployed)]
    assert [(a.threshold_source, a.anomalous, a.category) for a in asked] == [
        ("request", True, "fabric")] * 2
