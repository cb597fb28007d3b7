"""Dynamic batching: images from concurrent requests are scored together, off the event loop.

One asyncio task takes the first waiting image, gathers more until ``max_batch`` or until
``max_wait_ms`` have passed, and hands the batch to ONE worker thread that owns the model. While
that thread scores, new images queue up, so under load batches fill without waiting; a lone
request waits at most ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from refad.pipeline.postprocess import Prediction

PredictFn = Callable[
    [Sequence[np.ndarray], Sequence["str | None"], Sequence["float | None"]], list[Prediction]
]


class BatcherClosed(RuntimeError):
    """The server is shutting down (or not started): no new work is accepted."""


class QueueFull(RuntimeError):
    """More images are waiting than the server accepts; the client should retry later."""


@dataclass
class Scored:
    """One image's result and how it was scored."""

    result: Prediction
    batch_size: int
    queue_ms: float
    score_ms: float


@dataclass
class _Job:
    image: np.ndarray
    category: str | None
    threshold: float | None
    future: asyncio.Future[Scored]
    queued_at: float


class MicroBatcher:
    """Queue -> batches of at most ``max_batch`` -> ``predict`` in a single worker thread."""

    def __init__(
        self,
        predict: PredictFn,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 512,
        on_batch: Callable[[int, float, list[float]], None] | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = True

    def start(self) -> None:
        """Begin consuming (call from the running event loop)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refad-score")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="refad-batcher")

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(
        self,
        images: Sequence[np.ndarray],
        categories: Sequence[str | None],
        thresholds: Sequence[float | None],
    ) -> list[Scored]:
        """Queue the images of one request and wait for all of their results."""
        if self._closed or self._queue is None:
            raise BatcherClosed("the server is shutting down")
        if self.pending + len(images) > self.max_queue:
            raise QueueFull(f"{self.pending} images are waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        now = time.perf_counter()
        for image, category, threshold in zip(images, categories, thresholds, strict=True):
            future: asyncio.Future[Scored] = loop.create_future()
            self._queue.put_nowait(_Job(image, category, threshold, future, now))
            futures.append(future)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return list(outcomes)  # type: ignore[arg-type]

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [job for job in batch if not job.future.done()]  # drop abandoned requests

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._predict, [j.image for j in batch],
                    [j.category for j in batch], [j.threshold for j in batch],
                )
            except asyncio.CancelledError:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed("the server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - started
            waits = [started - j.queued_at for j in batch]
            if self._on_batch is not None:
                self._on_batch(len(batch), seconds, waits)
            for job, result, wait in zip(batch, results, waits, strict=True):
                if not job.future.done():
                    job.future.set_result(Scored(result, len(batch), wait * 1000, seconds * 1000))

    async def stop(self) -> None:
        """Refuse new work, fail what is still queued or being scored (its requests answer 503
        at once), and wait for the worker thread to finish its batch."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(BatcherClosed("the server is shutting down"))
        if self._executor is not None:
            # waited for off the loop: a batch still being scored (a forced stop) must not hold
            # up the 503s of its requests, which the loop sends meanwhile
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
