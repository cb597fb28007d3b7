"""`refad serve` under load, on loopback only: throughput, latency, errors, memory, batch sizes.

    python benchmarks/serve.py                    # trains Lite2 RLR on ../shared/data/realmix
    python benchmarks/serve.py --run runs/rlr     # or serve an existing run

Steps (all bounded): pick 256-px images from realmix's test sets; time `refad predict`'s batched
scoring of them (in-process, batch 16, after a warm-up: the work the CLI does, without its
start-up); start the server in a subprocess on a free 127.0.0.1 port; measure single-request
latency (1 client), then --requests requests from --clients concurrent httpx clients; read the
server's RSS from /proc at start and end; write benchmarks/serve.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REALMIX = HERE.parent.parent / "shared" / "data" / "realmix"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def train(data: Path, out: Path, epochs: int) -> Path:
    run = out / "run-lite2"
    if (run / "config.json").is_file():
        return run
    cmd = [sys.executable, "-m", "refad", "train", "--data", "mvtec", "--root", str(data),
           "--backbone", "tf_efficientnet_lite2", "--image-size", "256", "--epochs", str(epochs),
           "--batch-size", "16", "--no-progress", "--out", str(run)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, timeout=1800)
    return run


def pick_images(data: Path, n: int, folder: Path) -> list[Path]:
    """n test images (every category, good and defective), resized to 256x256 PNG files."""
    files = sorted(p for p in data.glob("*/test/*/*") if p.is_file())
    step = max(1, len(files) // n)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(files[::step][:n]):
        dst = folder / f"{i:03d}_{src.parent.parent.parent.name}.png"
        Image.open(src).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR).save(dst)
        out.append(dst)
    return out


def time_predict(run: Path, images: list[Path], out: Path, batch: int, copies: int) -> float:
    """Images per second of `refad predict` (`refad.api.predict`, files written), warm, over
    `copies` copies of the images in separate folders (predict scores a file given twice only
    once, so repeating the list would time a quarter of the work)."""
    import shutil

    import torch

    from refad.api import cpu_threads, predict

    torch.set_num_threads(cpu_threads())
    folders = []
    for i in range(copies):
        folders.append(out / "inputs" / f"copy{i}")
        folders[-1].mkdir(parents=True, exist_ok=True)
        for img in images:
            shutil.copy(img, folders[-1] / img.name)
    predict(run, images[:batch], out / "warm", batch_size=batch)
    tic = time.perf_counter()
    scored = len(predict(run, folders, out / "timed", batch_size=batch).predictions)
    seconds = time.perf_counter() - tic
    assert scored == copies * len(images), scored
    return scored / seconds


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    tic = time.monotonic()
    saw_503 = False
    while time.monotonic() - tic < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(url + "/readyz", timeout=5)
            if r.status_code == 200:
                return time.monotonic() - tic
            saw_503 = saw_503 or r.status_code == 503
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server not ready")


def one(client: httpx.Client, url: str, blob: bytes, outputs: str) -> tuple[float, int, int]:
    tic = time.perf_counter()
    r = client.post(url + "/v1/predict", files=[("image", ("x.png", blob, "image/png"))],
                    data={"outputs": outputs}, timeout=120)
    latency = time.perf_counter() - tic
    batch = r.json()["results"][0]["timing"]["batch_size"] if r.status_code == 200 else 0
    return latency, r.status_code, batch


def load(url: str, blobs: list[bytes], n: int, clients: int, outputs: str) -> dict:
    """n requests over `clients` threads, each with its own keep-alive connection."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    batches: Counter[int] = Counter()
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        with httpx.Client() as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    lat, status, batch = one(client, url, blobs[i % len(blobs)], outputs)
                except httpx.HTTPError:
                    lat, status, batch = float("nan"), -1, 0
                with lock:
                    latencies.append(lat)
                    statuses[status] += 1
                    batches[batch] += 1

    tic = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - tic
    ok = [x for x in latencies if np.isfinite(x)]
    return {"n": n, "seconds": seconds, "throughput": n / seconds, "p50": pct(ok, 50) * 1000,
            "p95": pct(ok, 95) * 1000, "p99": pct(ok, 99) * 1000,
            "errors": sum(v for k, v in statuses.items() if k != 200), "statuses": dict(statuses),
            "batches": dict(sorted(batches.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="existing run folder (default: train one)")
    p.add_argument("--data", type=Path, default=REALMIX)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--rendered-requests", type=int, default=200,
                   help="extra concurrent requests that also ask for heatmap+overlay PNGs")
    p.add_argument("--out", type=Path, default=HERE / "serve.md")
    a = p.parse_args()
    assert a.requests >= 1 and a.clients >= 1
    if not a.data.is_dir():
        sys.exit(f"{a.data}: realmix not found (see ../shared/data/README.md)")
    work = Path(tempfile.mkdtemp(prefix="refad-serve-bench-"))
    t0 = time.perf_counter()
    run = a.run or train(a.data, work, a.epochs)
    images = pick_images(a.data, a.images, work / "images")
    blobs = [p.read_bytes() for p in images]
    predict_ips = time_predict(run, images, work / "predict", a.max_batch, copies=4)
    print(f"refad predict (batch {a.max_batch}): {predict_ips:.1f} img/s", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "refad.serve", "--run", str(run), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(a.max_batch),
           "--max-wait-ms", str(a.max_wait_ms), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env={**os.environ, "REFAD_API_KEY": ""})
    try:
        ready_s = wait_ready(url, proc)
        rss_start = rss_mb(proc.pid)
        with httpx.Client() as client:
            for blob in blobs[:8]:
                one(client, url, blob, "none")  # warm the connection path
            single = [one(client, url, blobs[i % len(blobs)], "none")[0] * 1000
                      for i in range(50)]
        # warm-up at concurrency, through both paths the measured requests take
        load(url, blobs, 64, a.clients, "none")
        load(url, blobs, 32, a.clients, "heatmap,overlay")
        rss_warm = rss_mb(proc.pid)  # batched activations and pool threads: the baseline
        main_run = load(url, blobs, a.requests, a.clients, "none")
        rss_main = rss_mb(proc.pid)
        print(f"serve: {main_run['throughput']:.1f} req/s, errors {main_run['errors']}",
              flush=True)
        rendered = load(url, blobs, a.rendered_requests, a.clients, "heatmap,overlay")
        rss_end = rss_mb(proc.pid)
        metrics = httpx.get(url + "/metrics").text
        proc.terminate()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    rss = (rss_start, rss_warm, rss_main, rss_end)
    report(a, run, main_run, rendered, single, predict_ips, rss, ready_s, code, metrics,
           time.perf_counter() - t0)


def report(a, run, main_run, rendered, single, predict_ips, rss, ready_s, code,
           metrics, total_s) -> None:
    ratio = main_run["throughput"] / predict_ips
    rss_start, rss_warm, rss_main, rss_end = rss
    growth = rss_end - rss_warm
    hist = [line for line in metrics.splitlines()
            if line.startswith("refad_batch_size_bucket") or line.startswith("refad_batch_size_")
            and ("count" in line or "sum" in line)]
    lines = [
        "# `refad serve` under load (CPU, loopback)",
        "",
        f"Command: `python benchmarks/serve.py{' --run ' + str(run) if a.run else ''}` "
        f"(written {time.strftime('%Y-%m-%d %H:%M')}, {total_s / 60:.1f} min in all).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, load average "
        f"{os.getloadavg()[0]:.2f} at the end (the machine is shared: figures are noisy).",
        f"Model: RLR on tf_efficientnet_lite2 (pretrained), 256 px, unified, run `{run.name}`; "
        f"{a.images} realmix test images resized to 256x256 PNG, cycled.",
        f"Server: `python -m refad.serve --max-batch {a.max_batch} --max-wait-ms "
        f"{a.max_wait_ms}`; ready {ready_s:.1f} s after launch; exit code after SIGTERM: {code}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests (1 image each, outputs=none), {a.clients} concurrent clients | "
        f"{main_run['n']} |",
        f"| errors | {main_run['errors']} (statuses {main_run['statuses']}) |",
        f"| throughput | {main_run['throughput']:.1f} images/s |",
        f"| `refad predict` batched throughput (batch {a.max_batch}, same images, warm) | "
        f"{predict_ips:.1f} images/s |",
        f"| ratio serve / predict (target >= 0.8) | {ratio:.2f} |",
        f"| latency p50 / p95 / p99 under concurrency | {main_run['p50']:.0f} / "
        f"{main_run['p95']:.0f} / {main_run['p99']:.0f} ms |",
        f"| single-request latency p50 / p95 (1 client) | {pct(single, 50):.0f} / "
        f"{pct(single, 95):.0f} ms |",
        f"| p95 under concurrency / single-request p95 | "
        f"{main_run['p95'] / pct(single, 95):.1f}x |",
        f"| server RSS after launch / after the concurrent warm-up / after the "
        f"{main_run['n']} requests / at the end | "
        f"{rss_start:.0f} / {rss_warm:.0f} / {rss_main:.0f} / {rss_end:.0f} MB |",
        f"| RSS growth over the {main_run['n'] + rendered['n']} measured requests (limit 50 MB) | "
        f"{growth:+.0f} MB |",
        f"| batch sizes formed (images per batch -> requests) | {main_run['batches']} |",
        f"| with heatmap+overlay PNGs: {rendered['n']} requests | "
        f"{rendered['throughput']:.1f} images/s, p95 {rendered['p95']:.0f} ms, "
        f"errors {rendered['errors']} |",
        "",
        "Server-side batch-size histogram at the end (`/metrics`, all phases):",
        "",
        "```",
        *hist,
        "```",
        "",
        "Notes: each request carries one image, so the batches above are formed purely by the",
        "server's dynamic batching of concurrent requests. `refad predict` is timed in-process on",
        "the same images (its loop also writes heatmap and overlay PNGs); the single-client",
        "latency includes the max-wait window a lone request spends waiting for company.",
        "The first concurrent batches allocate their activations once (a batch of 4 at 256 px",
        "holds RLR's 1024 x 1024 attention logits per head) and the first picture requests",
        "start the pool threads that decode and render: growth is measured from after a",
        "warm-up of 64 plain and 32 picture requests, over the measured requests. The server",
        "returns each batch's freed memory to the system (`malloc_trim`, refad.serve.memory).",
        f"Mean single latency {statistics.mean(single):.0f} ms.",
    ]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
