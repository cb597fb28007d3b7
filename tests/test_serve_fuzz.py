"""Property-based runs against the live server: schemathesis over the published OpenAPI schema,
and hypothesis over real images of every mode and odd form values. Never a 5xx."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from test_serve_support import live_server, tiny_run, torch_factory

from refad.serve.settings import Settings

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory):
    _, run = tiny_run(tmp_path_factory)
    with live_server(torch_factory(run), Settings(api_key=KEY, max_image_pixels=512 * 512)) as s:
        yield s


def test_openapi_fuzz_never_5xx(fuzz_server):
    # schemathesis' own pytest plugin does not load under pytest 9, so each operation's
    # strategy runs in a plain hypothesis test.
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json",
                                           headers={"X-API-Key": KEY})
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    seen = []
    for found in schema.get_all_operations():
        operation = found.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(headers={"X-API-Key": KEY}, timeout=30, checks=checks)

        run()
    assert {"POST /v1/predict", "GET /v1/model", "GET /metrics", "GET /readyz"} <= set(seen)


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK"]
FORMATS = {"PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I;16"}, "JPEG": {"L", "RGB", "CMYK"},
           "BMP": {"1", "L", "P", "RGB"}, "TIFF": set(MODES) - {"P"}, "GIF": {"L", "P"},
           "WEBP": {"RGB", "RGBA"}}


@st.composite
def encoded_images(draw) -> tuple[bytes, str]:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from([f for f, modes in FORMATS.items() if mode in modes]))
    w, h = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    seed = draw(st.integers(0, 2**16))
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray(rgb[..., 0].astype(np.float32) * 200).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except OSError:  # a mode this PIL cannot write in that format: not what is under test
        assume(False)
    data = buf.getvalue()
    if draw(st.booleans()) and len(data) > 20:  # sometimes cut short or corrupted
        cut = draw(st.integers(8, len(data) - 1))
        data = data[:cut] if draw(st.booleans()) else data[:cut] + b"\xff" * 16 + data[cut + 16:]
    return data, f"{mode}.{fmt.lower()}"


FIELD_TEXT = st.one_of(st.none(), st.sampled_from(["fabric", "mesh", "wood", "", " ", "a" * 150]),
                       st.text(max_size=20))
THRESHOLDS = st.one_of(st.none(), st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e-30",
                                                   "1e308", "3.5", "abc", ""]),
                       st.floats(allow_nan=True).map(str))


@given(images=st.lists(encoded_images(), min_size=1, max_size=3), category=FIELD_TEXT,
       threshold=THRESHOLDS, outputs=st.sampled_from([None, "none", "heatmap", "mask,overlay",
                                                      "heatmap,bogus"]))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_image_and_field_gets_a_clean_answer(fuzz_server, images, category, threshold,
                                                 outputs):
    data = {k: v for k, v in {"category": category, "threshold": threshold,
                              "outputs": outputs}.items() if v is not None}
    files = [("image", (name, blob, "application/octet-stream")) for blob, name in images]
    r = httpx.post(fuzz_server.url + "/v1/predict", files=files, data=data, timeout=60,
                   headers={"X-API-Key": KEY})
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text)
    body = r.json()
    if r.status_code != 200:
        assert list(body) == ["error"] and body["error"]
        return
    assert len(body["results"]) == len(images)
    for result in body["results"]:
        if result["anomalous"] is not None:
            assert result["anomalous"] == (result["score"] > result["threshold"])
