"""Dynamic batching: requests for one variant are merged into one model run and split back.

A batch closes when ``max_batch_size`` rows are queued or when the oldest queued request has waited
``max_queue_delay`` (the delay counts from that request's arrival, so requests that queued while the
previous batch ran do not wait twice), as Triton's dynamic batcher does. With ``idle`` (the server's
"no other request is being read or checked right now") the batch also closes as soon as nothing more is on
its way: under a closed loop of N clients whose N requests are all queued, waiting for more could only add
the whole delay to every request, and at high load requests still pile up while the loop is busy, so
batches stay full. The delay stays the upper bound. Requests join the queue only
after they were checked against the model, so a malformed request never reaches a batch; if a batch of
several requests fails anyway (a data-dependent error inside the model), each request is run again alone
and only the failing one gets the error.

Small models run on the event loop itself (a thread hop costs more than the run: ~50 us against ~12 us for
a 30x64x2 MLP at 32 rows); slower ones run in a thread, where ONNX Runtime (and torch, inside its operators)
runs without the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("falaj.onnx_serving")

Feeds = dict[str, np.ndarray[Any, Any]]
Outputs = list[np.ndarray[Any, Any]]
RunFn = Callable[[Feeds], Outputs]
BatchHook = Callable[[int, int, Outputs, float], None]  # rows, requests, outputs, seconds


class Overloaded(Exception):
    """The variant's queue is full; answered 503."""


class InferenceFailed(Exception):
    """The model raised while running a request; answered 500 with the reason."""


@dataclass(slots=True)
class _Item:
    feeds: Feeds
    rows: int
    future: asyncio.Future[Outputs]
    enqueued: float


class Batcher:
    """The queue and batching loop of one variant, on one event loop."""

    def __init__(
        self,
        run: RunFn,
        *,
        input_names: Sequence[str],
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_rows: int,
        batchable: bool,
        idle: Callable[[], bool] | None = None,
        executor: Executor | None = None,
        on_batch: BatchHook | None = None,
    ) -> None:
        self._run = run
        self._names = list(input_names)
        self.max_batch_size = max_batch_size if batchable else 1
        self.delay = max_queue_delay_s
        self.max_queue_rows = max_queue_rows
        self.batchable = batchable
        self._idle = idle
        self.executor = executor
        self._on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._batch_loop(), name="falaj-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(Overloaded("the server is shutting down"))
        self._queued_rows = 0

    def submit(self, feeds: Feeds, rows: int) -> asyncio.Future[Outputs]:
        """Queue one checked request; its future gets this request's rows of every output."""
        loop = self._loop
        assert loop is not None, "Batcher.start() was not called"
        if self._queued_rows and self._queued_rows + rows > self.max_queue_rows:
            raise Overloaded(f"the queue holds {self._queued_rows} rows (limit {self.max_queue_rows}): retry later")
        future: asyncio.Future[Outputs] = loop.create_future()
        self._items.append(_Item(feeds, rows, future, loop.time()))
        self._queued_rows += rows
        self._wake.set()
        if self._queued_rows >= self.max_batch_size or self._idle is not None:
            self._full.set()  # a waiting batcher looks again: full, or nothing more on its way
        return future

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.batchable and self.delay > 0 and self._queued_rows < self.max_batch_size:
                deadline = self._items[0].enqueued + self.delay
                while self._queued_rows < self.max_batch_size:
                    if self._idle is not None and self._idle():
                        break  # no other request is being read: waiting would only add latency
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._full.clear()
                    timer = loop.call_later(remaining, self._full.set)
                    try:
                        await self._full.wait()
                    finally:
                        timer.cancel()
            batch = self._take()
            if batch:
                try:
                    await self._execute(batch)
                except Exception:  # never let the loop die: fail this batch, keep serving
                    log.exception("batch execution failed")
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(InferenceFailed("internal error while batching"))

    @staticmethod
    def _row_shapes(item: _Item) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """What must agree for requests to share a batch: every input's shape past the batch dimension."""
        return tuple((name, tuple(arr.shape[1:]), str(arr.dtype)) for name, arr in sorted(item.feeds.items()))

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        shapes = None
        while self._items:
            item = self._items[0]
            if batch and rows + item.rows > self.max_batch_size:
                break
            if batch and self._row_shapes(item) != shapes:
                break  # a request of another shape (a variable dimension) waits for the next batch
            if not batch:
                shapes = self._row_shapes(item)
            self._items.popleft()
            self._queued_rows -= item.rows
            if item.future.done():  # the client went away
                continue
            batch.append(item)
            rows += item.rows
            if not self.batchable:
                break
        return batch

    async def _call(self, feeds: Feeds) -> Outputs:
        if self.executor is None:
            return self._run(feeds)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run, feeds)

    async def _execute(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {name: np.concatenate([item.feeds[name] for item in batch], axis=0) for name in self._names}
            outputs = await self._call(feeds)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning("a batch of %d requests failed (%s); running them one by one", len(batch), exc)
            for item in batch:
                await self._execute([item])
            return
        elapsed = time.perf_counter() - started
        rows = sum(item.rows for item in batch)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
        else:
            offset = 0
            for item in batch:
                end = offset + item.rows
                if not item.future.done():
                    item.future.set_result([out[offset:end] for out in outputs])
                offset = end
        if self._on_batch is not None:
            self._on_batch(rows, len(batch), outputs, elapsed)


def _fail(item: _Item, exc: Exception) -> None:
    if not item.future.done():
        item.future.set_exception(InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}"))
