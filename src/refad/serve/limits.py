"""Request size limits, enforced while the body streams in (never buffered past the limit)."""

from __future__ import annotations

from starlette.requests import Request

from refad.serve.errors import ApiError


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or a 413 as soon as it (or its declared length) passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of "
                                f"{max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
