"""Tiling on a 4000 x 3000 image (issue 32): peak memory of `refad predict --run` scoring it by
tiles, and the largest difference between the maps of `predict --run`, `predict --model`
(ONNX Runtime) and the server's two backends on it. Writes benchmarks/tiling_memory.md.

The model is tiny on purpose (the figures are about tiling, not detection): RLR with one
layer on a random-weight EfficientNet-Lite0 (levels 2, 3), 128-px tiles at overlap 0.25,
trained one epoch on the tiles of four 256-px demo pictures. The picture is the demo fabric
repeated to 4000 x 3000 with a 40-px dark square. Each `refad predict` runs in its own
process, which reports its own peak resident memory (ru_maxrss).

    python benchmarks/tiling_memory.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
TILE, OVERLAP, SIZE = 128, 0.25, (3000, 4000)  # (height, width)
TRAIN = ["--backbone", "tf_efficientnet_lite0", "--weights", "none", "--epochs", "1",
         "--batch-size", "8", "--device", "cpu", "--no-progress",
         "--set", "data.categories=[fabric]", "--set", "model.num_layers=1",
         "--set", "model.hidden_dims=[32, 64]", "--set", f"data.image_size={TILE}",
         "--set", f"data.tiling.overlap={OVERLAP}"]
# runs the CLI in a fresh process and prints that process's peak RSS (kB on Linux) last
PEAK = ("import resource, sys; from refad.cli.main import app\n"
        "try:\n    app(sys.argv[1:], standalone_mode=False)\n"
        "finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def refad(*args: str) -> tuple[float, int]:
    """(seconds, peak kB) of one `refad` command in its own process."""
    tic = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"refad {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    peak = int(out.stdout.rsplit("PEAK_KB", 1)[1].split()[0])
    return time.perf_counter() - tic, peak


def big_picture(root: Path, path: Path) -> np.ndarray:
    """The demo fabric repeated to SIZE, with one dark 40-px square (a defect)."""
    tile = np.asarray(Image.open(next((root / "fabric" / "train" / "good").glob("*.png")))
                      .convert("RGB"))
    reps = (-(-SIZE[0] // tile.shape[0]), -(-SIZE[1] // tile.shape[1]), 1)
    rgb = np.ascontiguousarray(np.tile(tile, reps)[: SIZE[0], : SIZE[1]])
    rgb[1500:1540, 2100:2140] = 20
    Image.fromarray(rgb).save(path)
    return rgb


def maps_by_path(run: Path, export: Path, rgb: np.ndarray, picture: Path) -> dict:
    """Each path's Prediction of the picture: the functions `predict --run`, `predict
    --model` and the two server backends call (the server answers with their scores)."""
    from refad.deploy import Inferencer
    from refad.inference.predict import predict_images
    from refad.pipeline.postprocess import postprocess
    from refad.runs import open_run
    from refad.serve.deploy_backend import DeployBackend
    from refad.serve.torch_backend import TorchBackend

    opened = open_run(run, "cpu")
    thresholds, batches = predict_images(opened, [picture])
    result = next(iter(batches)).results[0]
    out = {"predict --run": postprocess(result.image, result.amap, result.score, thresholds)}
    out["predict --model (ONNX)"] = Inferencer(export).predict(picture)
    for name, backend in (("server (run folder)", TorchBackend(run, "cpu")),
                          ("server (export)", DeployBackend(export, "cpu"))):
        out[name] = backend.predict_batch([rgb], [None], [None])[0]
        out[f"{name}, HTTP score"] = served_score(backend, picture)
    return out


def served_score(backend: object, picture: Path) -> float:
    """The score the HTTP server answers for the picture (POST /v1/predict, in process)."""
    from fastapi.testclient import TestClient

    from refad.serve.app import create_app

    with TestClient(create_app(lambda: backend)) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        reply = client.post("/v1/predict", files=[("image", ("big.png", picture.read_bytes(),
                                                            "image/png"))])
        if reply.status_code != 200:
            raise SystemExit(f"server: {reply.status_code} {reply.text}")
        return float(reply.json()["results"][0]["score"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the run (temp)")
    parser.add_argument("--out", type=Path, default=HERE / "tiling_memory.md")
    args = parser.parse_args()
    from refad.data import make_demo_dataset
    from refad.pipeline.tiled import Tiling

    work = args.work or Path(tempfile.mkdtemp(prefix="refad-tiling-"))
    root, run, export = work / "data", work / "run", work / "export"
    make_demo_dataset(root, ["fabric"], n_train=4, n_test_good=1, n_test_defect=1, size=256)
    refad("train", "--root", str(root), "--out", str(run), *TRAIN)
    refad("export", "--run", str(run), "--out", str(export))
    picture = work / "big.png"
    rgb = big_picture(root, picture)
    small = work / "small.png"
    Image.fromarray(rgb[:256, :256]).save(small)
    tiles = len(Tiling(OVERLAP).grid(SIZE, (TILE, TILE)))

    rows = []
    for label, source, image in (("--run", run, small), ("--run", run, picture),
                                 ("--model", export, small), ("--model", export, picture)):
        out = work / f"pred-{label.strip('-')}-{image.stem}"
        seconds, peak = refad("predict", label, str(source), str(image), "--out", str(out),
                              "--device", "cpu", "--overwrite")
        score = json.loads((out / "predictions.json").read_text())["predictions"][0]["score"]
        rows.append((f"predict {label}", image.stem, seconds, peak / 1024, score))

    preds = maps_by_path(run, export, rgb, picture)
    reference = preds["predict --run"]
    span = float(np.ptp(reference.anomaly_map))
    diffs, served = [], []
    for name, p in preds.items():
        if isinstance(p, float):  # the HTTP answer: a score (maps travel as PNG pictures)
            served.append((name, p, abs(p - reference.score) / abs(reference.score)))
            continue
        d = float(np.abs(p.anomaly_map - reference.anomaly_map).max())
        diffs.append((name, p.anomaly_map.shape, p.score, abs(p.score - reference.score)
                      / abs(reference.score), d, d / span))

    mb = 3 * SIZE[0] * SIZE[1] / 2**20
    lines = [
        "# Tiling memory on a 4000 x 3000 image",
        "",
        "`python benchmarks/tiling_memory.py` (CPU). Tiny model, on purpose: RLR with one "
        "layer (hidden 32, 64) on a random-weight EfficientNet-Lite0 (levels 2, 3), trained "
        f"one epoch on the tiles of four 256-px demo fabric pictures; `data.image_size={TILE}`, "
        f"`data.tiling={{overlap: {OVERLAP}, scale: 1.0}}`. The picture: the demo fabric "
        f"repeated to 4000 x 3000 (a {mb:.0f} MB RGB array) with one dark 40-px square; "
        f"{tiles} tiles, scored 8 at a time. Each `refad predict` runs in a fresh process "
        "that reports its own peak resident memory; the 256 x 256 crop is the same process "
        "with one tile (the model, torch and the runtime), so the difference is what the "
        "large image costs. Seconds are wall time on a 2-core machine shared with other "
        "work (a test run): not a speed figure.",
        "",
        "| command | image | seconds | peak RSS (MB) | score |",
        "|---|---|---:|---:|---:|",
        *(f"| `refad {c}` | {i} | {s:.1f} | {m:.0f} | {v:.5f} |" for c, i, s, m, v in rows),
        "",
        "Peak memory grows with the image's pixels (the picture, its stitched map and its "
        "pictures at image size), never with the tile count: tiles are cut and scored one "
        "batch at a time and only the image-sized sums of the stitcher are held.",
        "",
        "## The same map on every path",
        "",
        "Maps at the image's own size (4000 x 3000) from the functions each path calls on "
        "the same picture: `predict --run` (`inference.predict_images` + `postprocess`), "
        "`predict --model` (`deploy.Inferencer`, ONNX Runtime), and the server's two "
        "backends (`serve.torch_backend`, `serve.deploy_backend`), whose score the HTTP "
        "server answers (rows POST /v1/predict: the picture uploaded to the app; its maps "
        "travel as PNG pictures, so the float maps are those of the backends it calls).",
        "",
        "| path | map shape | score | score rel. diff | map max abs diff | of map range |",
        "|---|---|---:|---:|---:|---:|",
        *(f"| {n} | {s[1]} x {s[0]} | {v:.6f} | {r:.2e} | {d:.2e} | {f:.2e} |"
          for n, s, v, r, d, f in diffs),
        *(f"| {n} (POST /v1/predict) | - | {v:.6f} | {r:.2e} | - | - |" for n, v, r in served),
        "",
        "The export parity bounds for fp32 (`refad.export.parity.TOLERANCES`): a map "
        "difference of at most 1e-4 of the map's range, 1e-5 relative on scores.",
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
