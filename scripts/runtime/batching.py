"""Greedy micro-batching for an asyncio server: requests that arrive while a batch is running form
the next batch, run in one worker thread with one call. Nothing waits for a batch to fill (no
added latency for a lone client), and under concurrency the per-request costs (the thread hop, the
forward pass) are shared. Results go back to each request in order; a failure of a batch call
fails that batch's requests only."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[Item]):
    items: Sequence
    future: asyncio.Future = field(repr=False)


class MicroBatcher(Generic[Item, Out]):
    def __init__(self, run: Callable[[list[Item]], list[Out]], max_items: int = 64, inline_below_s: float = 0.0):
        """`run` maps a list of items to one output per item; it runs in a worker thread, one call
        at a time. A batch holds up to `max_items` items (at least one request, whatever its size).
        While batches take less than `inline_below_s` on average, `run` is called on the event
        loop itself: for a model that answers in a millisecond, two thread hand-offs per batch
        cost more than the loop pause they avoid."""
        if max_items < 1:
            raise ValueError("max_items must be ≥ 1")
        self.run, self.max_items, self.inline_below_s = run, max_items, inline_below_s
        self.mean_s = float("inf")  # running mean of a batch call (unknown: use the thread)
        self.queue: asyncio.Queue[_Pending] | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0  # calls of `run`, for tests and logs
        self._next: _Pending | None = None  # taken from the queue but over the last batch's size

    async def submit(self, items: Sequence[Item]) -> list[Out]:
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()  # bound to the running loop: created on first use
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        pending = _Pending(items, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(pending)
        return await pending.future

    def _timed(self, items: list[Item]) -> list[Out]:
        """`run`, timing the call itself (not the thread hand-off) into the running mean."""
        started = time.perf_counter()
        outputs = self.run(items)
        took = time.perf_counter() - started
        self.mean_s = took if self.mean_s == float("inf") else 0.9 * self.mean_s + 0.1 * took
        return outputs

    async def _serve(self) -> None:
        while True:
            first, self._next = self._next or await self.queue.get(), None
            batch, size = [first], len(first.items)
            while not self.queue.empty():
                p = self.queue.get_nowait()
                if size + len(p.items) > self.max_items:
                    self._next = p
                    break
                batch.append(p)
                size += len(p.items)
            items = [item for p in batch for item in p.items]
            try:
                if self.mean_s < self.inline_below_s:
                    outputs = self._timed(items)
                else:
                    outputs = await asyncio.to_thread(self._timed, items)
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
