"""Server settings: batching, limits and the API key, in one frozen object per app."""

from __future__ import annotations

from dataclasses import dataclass

from refad.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Defaults are safe for a shared machine; every limit answers a 4xx, never a crash."""

    max_batch: int = 16  # images scored together
    max_wait_ms: float = 5.0  # how long a lone image waits for company
    max_queue: int = 512  # images waiting to be scored; beyond this, 503
    max_body_bytes: int = 64 * 1024 * 1024
    max_images: int = 64  # per request
    max_image_pixels: int = 16_000_000  # width x height, checked on the header
    max_pixels_in_flight: int = 128_000_000  # summed over the requests being processed
    api_key: str | None = None  # None: no key required
    warmup: bool = True
    release_memory: bool = True  # malloc_trim after each batch: resident memory stays flat

    def __post_init__(self) -> None:
        positive = ("max_batch", "max_queue", "max_body_bytes", "max_images", "max_image_pixels",
                    "max_pixels_in_flight")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be >= 1")
        if self.max_pixels_in_flight < self.max_image_pixels:
            raise ConfigError("serve: max_pixels_in_flight must be >= max_image_pixels (else "
                              "an image within the per-image limit could never be scored)")
        if self.max_wait_ms < 0:
            raise ConfigError("serve: max_wait_ms must be >= 0")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("serve: the API key is empty")
