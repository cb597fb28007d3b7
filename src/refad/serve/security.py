"""The optional API key: read from a file or REFAD_API_KEY (never the command line), checked
in constant time on every request except the health checks and the page's static files."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from refad.errors import ConfigError
from refad.serve.errors import error_response

ENV_VAR = "REFAD_API_KEY"
# Paths open without a key: probes must work unauthenticated, and the page holds no data (it
# asks for the key and sends it with each API call).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/static/app.js", "/static/app.css"})


def load_api_key(api_key_file: Path | None = None, env: dict[str, str] | None = None) -> str | None:
    """The key from ``api_key_file`` (first line, stripped), else $REFAD_API_KEY, else None."""
    env = os.environ if env is None else env
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the API key file ({exc})") from None
        key = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not key:
            raise ConfigError(f"{path}: the API key file is empty")
        return key
    key = env.get(ENV_VAR, "").strip()
    return key or None


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """``X-API-Key: K`` or ``Authorization: Bearer K``."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


class ApiKeyMiddleware:
    """401 with a JSON body unless the request carries the key (compared with hmac)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = presented_key(scope["headers"])
        if given is None or not hmac.compare_digest(given, self.key):
            reason = "missing API key" if given is None else "wrong API key"
            response = error_response(
                401, f"{reason}: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
