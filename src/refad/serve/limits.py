"""Request limits: body bytes while the body streams in, and pixels summed over all requests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from starlette.requests import ClientDisconnect, Request

from refad.serve.errors import ApiError


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or a 413 as soon as it (or its declared length) passes ``max_bytes``.

    A client that goes away mid-body gets a 400 (which it will not read): its request was
    incomplete, which is not a server error to count or log with a traceback.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of "
                                f"{max_bytes}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, f"the client disconnected after {size} bytes of the request "
                            "body") from None
    return b"".join(chunks)


class PixelBudget:
    """The pixels of the images being decoded, scored or drawn, summed over all requests.

    Memory follows pixels, not bytes (a 56 kB PNG can hold 16 M pixels, and each pixel becomes
    an RGB value, full-size maps and pictures), so a per-image limit alone lets a few small
    requests take gigabytes. A request is admitted only while the sum stays within ``limit``:
    one larger than the limit gets 413, one that would pass it now gets 503 (retry). Used from
    the event loop only, so the counter needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        if pixels > self.limit:
            raise ApiError(413, f"{pixels} pixels in one request is over the limit of "
                                f"{self.limit} pixels in flight")
        if self.in_use + pixels > self.limit:
            raise ApiError(503, f"server busy: {self.in_use} pixels are being processed "
                                f"(limit {self.limit}); retry shortly", {"Retry-After": "1"})
        self.in_use += pixels
        try:
            yield
        finally:
            self.in_use -= pixels
