"""Render a run's report.html to a PNG, the way a reader's browser shows it.

    python benchmarks/report_png.py RUN_DIR/report.html OUT.png [--width 1280]

Headless Chromium (Debian's /usr/bin/chromium) through Playwright's sync API takes a
full-page screenshot: a quick way to check the layout at a given width without a desktop,
and proof that the page needs nothing from the network (background networking is off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update",
    "--no-first-run",
]


def render(report: Path, out: Path, width: int = 1280) -> tuple[int, int]:
    """Screenshot the whole page of `report` at `width` CSS pixels into `out`; (width,
    height) of the PNG written."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.goto(report.resolve().as_uri(), wait_until="load")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    with Image.open(out) as img:
        return img.size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html of a run folder")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS px")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"{args.report}: no such file", file=sys.stderr)
        return 2
    width, height = render(args.report, args.out, args.width)
    size = args.out.stat().st_size
    print(f"{args.out}: {width}x{height} px, {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
