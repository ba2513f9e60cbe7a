"""Greedy micro-batching for an asyncio server: requests that arrive while a batch is running form
the next batch, run in a worker thread with one call. Nothing waits for a batch to fill (no added
latency for a lone client), and under concurrency the per-request costs (the thread hop, the
forward pass) are shared. With several workers, that many batches run at once, each worker always
on its own thread (torch's OpenMP pool belongs to the thread that calls it: a new thread per call
would start, and spin, another pool). Results go back to each request in order; a failure of a
batch call fails that batch's requests only. The queue is bounded: a request that finds
`max_pending` requests already waiting is refused at once (QueueFull), as TorchServe's
job_queue_size does, so a burst costs memory only up to that bound."""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Out = TypeVar("Out")


class QueueFull(RuntimeError):
    """Too many requests already wait for a batch: refused without queueing."""


@dataclass
class _Pending(Generic[Item]):
    items: Sequence
    future: asyncio.Future = field(repr=False)
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[Item, Out]):
    def __init__(self, run: Callable[[list[Item]], list[Out]], max_items: int = 64, workers: int = 1,
                 inline_below_s: float = 0.0, max_pending: int | None = None,
                 on_wait: Callable[[float], None] | None = None):
        """`run` maps a list of items to one output per item; it runs in `workers` threads, one call
        at a time in each. A batch holds up to `max_items` items (at least one request, whatever
        its size). With one worker, while batches take less than `inline_below_s` on average, `run`
        is called on the event loop itself: for a model that answers in a millisecond, two thread
        hand-offs per batch cost more than the loop pause they avoid. At most `max_pending`
        requests wait (None: no bound). `on_wait(seconds)` hears each request's wait for its batch."""
        if max_items < 1 or workers < 1 or (max_pending is not None and max_pending < 1):
            raise ValueError("max_items, workers and max_pending must be ≥ 1")
        self.run, self.max_items, self.workers, self.inline_below_s = run, max_items, workers, inline_below_s
        self.max_pending, self.on_wait = max_pending, on_wait
        self.inside = 0  # requests submitted and not yet answered: waiting or in a batch
        self.mean_s = float("inf")  # running mean of a batch call (unknown: use the thread)
        self.pending: collections.deque[_Pending] = collections.deque()
        self.arrived: asyncio.Event | None = None
        self.tasks: list[asyncio.Task] = []
        self.threads = [ThreadPoolExecutor(1, thread_name_prefix=f"batch-{n}") for n in range(workers)]
        self.batches = 0  # calls of `run`, for tests and logs

    async def submit(self, items: Sequence[Item]) -> list[Out]:
        if self.max_pending is not None and len(self.pending) >= self.max_pending:
            raise QueueFull(f"{len(self.pending)} requests already wait for this model (queue size {self.max_pending})")
        loop = asyncio.get_running_loop()
        if not self.tasks or any(t.done() for t in self.tasks):
            self.arrived = asyncio.Event()  # bound to the running loop: created on first use
            self.tasks = [loop.create_task(self._serve(thread)) for thread in self.threads]
        pending = _Pending(items, loop.create_future())
        self.pending.append(pending)
        self.arrived.set()
        self.inside += 1
        try:
            return await pending.future
        finally:
            self.inside -= 1

    def on_worker(self, n: int, fn: Callable, *args, **kwargs):
        """`fn(*args, **kwargs)` on worker `n`'s thread, waited for (set-up that its calls rely on)."""
        return self.threads[n].submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Let the worker threads end once their calls are done."""
        for thread in self.threads:
            thread.shutdown(wait=False)

    def _timed(self, items: list[Item]) -> list[Out]:
        """`run`, timing the call itself (not the thread hand-off) into the running mean."""
        started = time.perf_counter()
        outputs = self.run(items)
        took = time.perf_counter() - started
        self.mean_s = took if self.mean_s == float("inf") else 0.9 * self.mean_s + 0.1 * took
        return outputs

    async def _next_batch(self) -> list[_Pending]:
        """What has queued, in order, up to max_items (the first request whatever its size)."""
        while not self.pending:
            self.arrived.clear()
            await self.arrived.wait()
        batch = [self.pending.popleft()]
        size = len(batch[0].items)
        while self.pending and size + len(self.pending[0].items) <= self.max_items:
            p = self.pending.popleft()
            batch.append(p)
            size += len(p.items)
        return batch

    async def _serve(self, thread: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if self.on_wait is not None:
                now = time.perf_counter()
                for p in batch:
                    self.on_wait(now - p.queued_at)
            items = [item for p in batch for item in p.items]
            try:
                if self.workers == 1 and self.mean_s < self.inline_below_s:
                    outputs = self._timed(items)
                else:
                    outputs = await loop.run_in_executor(thread, self._timed, items)
                self.batches += 1
                if len(outputs) != len(items):
                    raise RuntimeError(f"batch call returned {len(outputs)} outputs for {len(items)} items")
            except Exception as e:  # noqa: BLE001 - the batch's callers get the error, the server goes on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            start = 0
            for p in batch:
                if not p.future.done():  # a caller may have gone away (cancelled)
                    p.future.set_result(outputs[start:start + len(p.items)])
                start += len(p.items)
