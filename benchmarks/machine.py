"""What machine a benchmark ran on, for the reports."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


NOTES_MARKER = "## Reading these figures"


def kept_notes(report: Path) -> str:
    """The hand-written analysis at the end of an existing report (from NOTES_MARKER on)."""
    if report.exists():
        text = report.read_text()
        if NOTES_MARKER in text:
            return NOTES_MARKER + text.split(NOTES_MARKER, 1)[1]
    return ""
