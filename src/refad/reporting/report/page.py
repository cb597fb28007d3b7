"""The document around the sections: their order and headings, the table of contents, the
header and the inline CSS (no external stylesheet: the file must open offline)."""

from __future__ import annotations

from typing import Any

import refad
from refad.pipeline.preprocess import size_label
from refad.reporting.report.markup import escape, section
from refad.runs import TrainedRun

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("config", "Configuration"),
    ("data", "Data"),
    ("metrics", "Threshold-free metrics"),
    ("decisions", "Decisions at the calibrated threshold"),
    ("curves", "ROC and precision-recall curves"),
    ("histograms", "Score histograms"),
    ("gallery", "Gallery"),
    ("loss", "Training loss"),
)
"""(id, heading) of the report's sections, in page order."""

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #dfe3ea; --soft: #f5f7fa;
  --accent: #2f6db5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
header { border-bottom: 3px solid var(--accent); margin-bottom: 16px; padding-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; overflow-wrap: anywhere; }
h4 { font-size: 14px; margin: 14px 0 6px; }
h4 small { color: var(--muted); font-weight: normal; margin-left: 6px; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 16px; display: inline-block; }
nav.toc ol { margin: 4px 0; padding-left: 20px; columns: 3; column-gap: 40px; }
a { color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 6px;
  max-width: 1100px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
thead th { background: var(--soft); border-bottom: 2px solid var(--line); white-space: nowrap; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 2px solid var(--line); }
table.facts th { color: var(--muted); font-weight: normal; width: 160px; }
.cards { display: flex; gap: 12px; margin: 8px 0 16px; flex-wrap: wrap; }
.card { flex: 1 1 200px; border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; background: var(--soft); }
.card .value { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { font-weight: 600; }
.card .hint, .note, .none { color: var(--muted); font-size: 13px; }
ul.notes { color: var(--muted); font-size: 13px; }
details pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 14px; font-size: 12.5px; line-height: 1.4; max-height: 480px; overflow: auto; }
summary { cursor: pointer; color: var(--muted); }
img.figure { display: block; max-width: 100%; height: auto; }
.category { margin-bottom: 12px; }
.entries { display: flex; flex-wrap: wrap; gap: 14px; }
.entry { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px;
  background: #fff; }
.tiles { display: flex; gap: 6px; }
.tile { width: 128px; font-size: 12px; color: var(--muted); text-align: center; }
.tile img.pic, .tile .blank { display: block; width: 128px; height: 128px;
  object-fit: contain; background: var(--soft); border-radius: 3px; }
.tile .blank { display: flex; align-items: center; justify-content: center; padding: 6px;
  font-size: 11px; overflow: hidden; word-break: break-word; }
figcaption { font-size: 12.5px; margin-top: 6px; display: flex; gap: 12px; flex-wrap: wrap; }
.failure { color: #a1262f; font-size: 13px; margin: 0; }
.entry.failed { padding: 10px 12px; border-color: #e8b4b9; background: #fdf3f4;
  max-width: 1100px; }
"""


def page(metrics: dict[str, Any], run: TrainedRun, bodies: dict[str, str]) -> str:
    """The whole document: header, table of contents, the sections in `SECTIONS` order."""
    name = run.path.resolve().name
    toc = "".join(f'<li><a href="#{sid}">{escape(title)}</a></li>' for sid, title in SECTIONS)
    sections = "\n".join(section(sid, title, bodies[sid]) for sid, title in SECTIONS)
    subtitle = (f"{metrics.get('method')} · backbone {metrics.get('backbone')} · "
                f"{size_label(metrics.get('image_size'))} px · refad {refad.__version__}")
    title = escape(name)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>refad report - {title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        "<main>\n"
        f"<header><h1>Run report: {title}</h1><p>{escape(subtitle)}</p></header>\n"
        f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>\n'
        f"{sections}\n</main>\n</body>\n</html>\n"
    )
