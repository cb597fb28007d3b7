"""``python -m refad.serve``: the same entry point as ``refad serve``, without the CLI package."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from refad.errors import RefadError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refad.serve", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder written by `refad train`")
    src.add_argument("--model", type=Path, help="exported folder (refad export)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--api-key-file", type=Path, help="file holding the key (or $REFAD_API_KEY)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-pixels-in-flight", type=int, default=128_000_000)
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # before the server runs (imports, checks) a signal stops it as `refad serve`: one line,
    # status 130, not a traceback (SIGINT) or a death by the signal (SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from refad.serve.server import run_server  # a second of imports (uvicorn, FastAPI)

        return run_server(a.run, a.model, a.host, a.port, a.device, a.api_key_file, a.max_batch,
                          a.max_wait_ms, max_pixels_in_flight=a.max_pixels_in_flight,
                          log_level=a.log_level)
    except RefadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    try:
        status = main()
    finally:  # the exit status is decided: a late signal must not turn it into a failure
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(status)
