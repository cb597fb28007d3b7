"""Every error the API answers is a status and a one-line message: {"error": "..."}."""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """Raised anywhere in a request; the app turns it into ``status`` + {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
