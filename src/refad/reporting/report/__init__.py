"""`report.html`: one self-contained page per run folder, for whoever has to judge the run
without rerunning it: what was trained, how well it ranks and decides, where it fails (with
pictures of the failures) and how training went.

Built from what `refad test` wrote (`metrics.json`, `test_scores.json`) and from the
checkpoints (loss history, calibration); only the few gallery images are scored again, for
their anomaly maps. Every picture is a PNG data URI and the CSS is inline: the file opens
offline, can be mailed or archived, and never fetches anything.

This package only assembles the page; its modules: `views` (test rows per category),
`markup` (HTML pieces), `figures` (charts), `tiles` (gallery pictures), `gallery`,
`sections` (the other section bodies) and `page` (the document around them).
"""

from __future__ import annotations

from pathlib import Path

from refad.atomic import write_text_atomic
from refad.errors import require_at_least_one
from refad.reporting.report.gallery import gallery_section
from refad.reporting.report.page import page
from refad.reporting.report.sections import (
    config_section,
    curves_section,
    data_section,
    decisions_section,
    histograms_section,
    loss_section,
    metrics_section,
    summary_section,
)
from refad.reporting.report.views import category_views
from refad.runs import RunDir, open_run

__all__ = ["build_report"]


def build_report(
    run_dir: Path | str,
    device: str | None = None,
    gallery_size: int = 3,
    amp: bool = False,
    compile_mode: str | None = None,
) -> Path:
    """Write `report.html` into a run folder that `refad test` has evaluated; return its path.

    Raises CheckpointError (one line, naming `refad test`) when the evaluation files are
    missing. `device` scores the gallery images (default: the run's configured device);
    `gallery_size` images of each kind per category are shown; `amp` / `compile_mode` score
    them as `refad test` did (see `refad.inference.Scorer`).
    """
    require_at_least_one("gallery_size", gallery_size)
    folder = RunDir(Path(run_dir))
    metrics, rows = folder.read_evaluation()  # first: cheap, and says what to run when missing
    run = open_run(folder.path, device)
    metas = {unit: run.model(unit)[1] for unit in run.units}
    folder.check_evaluated_models(metrics, metas)
    views = category_views(metrics, rows)
    bodies = {
        "summary": summary_section(metrics, run),
        "config": config_section(run),
        "data": data_section(views, run, {u: m.unit_calibration(u) for u, m in metas.items()}),
        "metrics": metrics_section(metrics),
        "decisions": decisions_section(metrics),
        "curves": curves_section(views),
        "histograms": histograms_section(views),
        "gallery": gallery_section(run, views, gallery_size, amp, compile_mode),
        "loss": loss_section({u: list(m.history) for u, m in metas.items()}),
    }
    path = folder.report_path
    write_text_atomic(path, page(metrics, run, bodies))
    return path

