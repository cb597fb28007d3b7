"""PatchCore's memory bank in an ONNX graph: a constant inside the graph (what `refad export`
writes) against a graph input fed beside it on every call. Which is faster?

Only the nearest-neighbour part differs between the two, so that part is exported twice from
the run's own `PatchCore.nearest` (the same code the exported scoring graph runs), once with the
bank as an initializer and once with the bank as a second input, and both are timed with ONNX
Runtime on the same queries: the embedded patches of `--images` batches of images (a
fitted run's bank; queries are bank rows with noise, the shape a 256-px batch gives).
Writes benchmarks/patchcore_bank_onnx.md.

    python benchmarks/patchcore_bank_onnx.py --run runs/realmix/patchcore-e1-b32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from refad.runs.checkpoint import load_model

HERE = Path(__file__).parent


class BankInside(nn.Module):
    """Queries -> nearest distance, the bank a constant of the graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return self.model.nearest(queries)[0]


class BankBeside(nn.Module):
    """Queries and the bank -> nearest distance, the bank an input of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        self.model.bank = bank
        return self.model.nearest(queries)[0]


def export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
           path: Path) -> None:
    axes = {"queries": {0: "patches"}}
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=18,
                      input_names=names, output_names=["distance"], dynamic_axes=axes)


def timed(session: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int) -> float:
    session.run(None, feeds)  # warm-up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--images", type=int, default=8, help="images per batch")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model, _ = load_model(args.run, "cpu")
    model.eval()
    bank = model.bank.detach().clone()
    side = model.spec.shapes[model.config.grid_level][0]
    n = args.images * side * model.spec.shapes[model.config.grid_level][1]
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(0, bank.shape[0], (n,), generator=g)
    queries = bank[pick] + 0.1 * torch.randn(n, bank.shape[1], generator=g)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        inside, beside = Path(tmp) / "inside.onnx", Path(tmp) / "beside.onnx"
        export(BankInside(model), (queries,), ["queries"], inside)
        export(BankBeside(model), (queries, bank), ["queries", "bank"], beside)
        model.bank = bank
        feeds = {"queries": queries.numpy()}
        a = ort.InferenceSession(str(inside), options, providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(str(beside), options, providers=["CPUExecutionProvider"])
        same = np.abs(a.run(None, feeds)[0] - b.run(None, {**feeds, "bank": bank.numpy()})[0])
        for _ in range(2):  # alternate, so drift on the shared machine hits both
            rows.append(("inside", timed(a, feeds, args.repeats)))
            rows.append(("beside", timed(b, {**feeds, "bank": bank.numpy()}, args.repeats)))
        size = {"inside": inside.stat().st_size, "beside": beside.stat().st_size}
    best = {k: min(t for name, t in rows if name == k) for k in ("inside", "beside")}
    lines = [
        "# PatchCore's bank inside the ONNX graph or beside it",
        "",
        f"`python benchmarks/patchcore_bank_onnx.py --run {args.run}` on "
        f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads), "
        "ONNX Runtime CPU, shared with other jobs (the ratio is what counts).",
        "",
        f"Bank {tuple(bank.shape)} (float32, {bank.numel() * 4 / 2**20:.1f} MiB) from the run; "
        f"{n} query patches ({args.images} images of {side} x {side} patches). Median of "
        f"{args.repeats} calls, best of two alternating rounds.",
        "",
        "| bank | seconds per batch | graph file |",
        "|---|---:|---:|",
        f"| inside (initializer; what `refad export` writes) | {best['inside']:.3f} | "
        f"{size['inside'] / 2**20:.1f} MiB |",
        f"| beside (a graph input fed each call) | {best['beside']:.3f} | "
        f"{size['beside'] / 2**20:.2f} MiB |",
        "",
        f"Ratio beside / inside: {best['beside'] / best['inside']:.2f}. Largest distance "
        f"difference between the two graphs: {same.max():.1e}.",
    ]
    (HERE / "patchcore_bank_onnx.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
