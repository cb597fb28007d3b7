"""The high-resolution demo product (`wafer`: 1024-px pictures, defects of 10-30 px) with and
without tiling: resized to the model's 256 px its defects shrink to a few pixels inside a
texture of the same period; cut into 256-px tiles at native resolution they keep their pixels.

Runs `refad demo --hires` through the API (the same settings, the same two PatchCore runs on
Lite2 levels 2 and 3) and writes its comparison table to benchmarks/hires_demo.md. Text from
"## Reading these figures" on is kept.

    python benchmarks/hires_demo.py [--work /tmp/refad-hires]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from machine import cpu_model, kept_notes

from refad import api

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/refad-hires"))
    args = parser.parse_args()
    settings = api.HiresDemoSettings()
    tic = time.perf_counter()
    results = api.run_hires_demo(args.work, device="cpu", progress=False,
                                 echo=lambda s: None, settings=settings)
    wall = time.perf_counter() - tic
    out = HERE / "hires_demo.md"
    lines = [
        "# The high-resolution demo product: missed when resized, found with tiles",
        "",
        f"Command: `python benchmarks/hires_demo.py` (the same runs as `refad demo --hires`). "
        f"Machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"the whole demo took {wall:.0f} s. Product `wafer` from refad's demo generator "
        f"({settings.size} px; {settings.n_train} normal training pictures, "
        f"{settings.val_fraction:.0%} of them held out to calibrate; {settings.n_test_good} "
        f"good and {settings.n_test_defect} defective test pictures with particles, scratches "
        "and voids of 10-30 px). PatchCore, tf_efficientnet_lite2 levels 2 and 3, a 1% "
        f"coreset; the model's input is {settings.input_size} px in both rows.",
        "",
        api.hires_table(results, settings),
        "",
    ]
    out.write_text("\n".join(lines) + "\n" + kept_notes(out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
