"""One load generator for bench, reliability and monitoring: `concurrency` client threads, each
with its own sender (its own connection), take request numbers from one shared counter and send
until `stop()`, `seconds` after the start or `max_requests`, whichever comes first. Every request
becomes a Sample with its own timing and outcome; what counts as right (the expected label, the
expected answer, an expected 4xx) is the sender's business. Latency quantiles everywhere are
scripts/harness/latency.py's one rule.

With `warmup_seconds`, each thread first sends (unrecorded) for that long, then all threads start
the measured phase together, so connection set-up and first-call costs stay out of the numbers."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from tqdm import tqdm

from scripts.harness.latency import quantile


@dataclass(frozen=True)
class Outcome:
    """What one request got: `ok` when the answer is the one expected for it."""

    ok: bool
    status: int = 200  # HTTP status; 0: no answer (connection error, time-out, client exception)
    version: str | None = None
    error: str = ""


@dataclass(frozen=True)
class Sample:
    index: int  # the request number (senders map it onto their images and protocols)
    sent: float  # time.perf_counter()
    done: float
    ok: bool
    status: int
    version: str | None
    error: str

    @property
    def seconds(self) -> float:
        return self.done - self.sent


# A sender sends request `index` and says what it got; it may raise (then status 0).
Send = Callable[[int], Outcome]


def latencies(samples: list[Sample], only_ok: bool = True) -> list[float]:
    return [s.seconds for s in samples if s.ok or not only_ok]


def latency_ms(samples: list[Sample], q: float, only_ok: bool = True) -> float:
    """The q-quantile of the samples' latencies in milliseconds (NaN without samples)."""
    return 1e3 * quantile(latencies(samples, only_ok), q)


def loopback_only(url: str) -> str:
    if not url.startswith(("http://127.", "http://localhost")):
        raise ValueError(f"load goes to loopback only, not {url}")
    return url


class Load:
    """Use as a context manager (`with Load(...) as load: ...; load.wait()`) or call `run()`."""

    def __init__(self, sender: Callable[[], Send], concurrency: int, seconds: float,
                 max_requests: int = 1_000_000, warmup_seconds: float = 0.0, per_client: int | None = None,
                 on_start: Callable[[], None] | None = None):
        self.sender, self.concurrency = sender, concurrency
        self.seconds, self.max_requests, self.warmup_seconds = seconds, max_requests, warmup_seconds
        self.per_client, self.on_start = per_client, on_start
        self.samples: list[Sample] = []
        self.in_flight = 0
        self.sent = 0
        self.started = self.deadline = self.finished = 0.0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._barrier = threading.Barrier(concurrency + 1, action=self._begin)

    def _begin(self) -> None:  # once, when every thread is ready: the measured phase starts here
        if self.on_start:
            self.on_start()
        self.started = time.perf_counter()
        self.deadline = self.started + self.seconds

    def _send(self, send: Send, i: int) -> Outcome:
        try:
            return send(i)
        except Exception as e:  # noqa: BLE001 - any failure is a failed request, reported
            return Outcome(False, 0, error=f"{type(e).__name__}: {e}"[:300])

    def _client(self, w: int) -> None:
        send = self.sender()
        warm_until, i = time.perf_counter() + self.warmup_seconds, w
        while time.perf_counter() < warm_until:  # warm connections, caches and JITs
            self._send(send, i)
            i += self.concurrency
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            return
        mine = 0
        while not self._stop.is_set() and (self.per_client is None or mine < self.per_client):
            mine += 1
            with self.lock:
                if self.sent >= self.max_requests or time.perf_counter() >= self.deadline:
                    return
                i, self.sent = self.sent, self.sent + 1
                self.in_flight += 1
            t0 = time.perf_counter()
            o = self._send(send, i)
            sample = Sample(i, t0, time.perf_counter(), o.ok, o.status, o.version, o.error)
            with self.lock:
                self.in_flight -= 1
                self.samples.append(sample)

    def __enter__(self) -> "Load":
        self._threads = [threading.Thread(target=self._client, args=(w,), daemon=True)
                         for w in range(self.concurrency)]
        for t in self._threads:
            t.start()
        self._barrier.wait()
        return self

    def wait(self, progress: str | None = None) -> None:
        """Until every client has finished; `progress` names a bar of the seconds gone."""
        bar = tqdm(total=round(self.seconds), desc=progress, unit="s", leave=False) if progress else None
        while alive := [t for t in self._threads if t.is_alive()]:
            alive[0].join(timeout=0.5)
            if bar is not None:
                bar.n = min(bar.total, round(time.perf_counter() - self.started))
                bar.set_postfix(requests=len(self.samples), refresh=True)
        if bar is not None:
            bar.close()
        self.finished = self.finished or time.perf_counter()

    def stop(self) -> None:
        self._stop.set()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.wait()

    def run(self) -> list[Sample]:
        with self:
            self.wait()
        return self.samples

    @property
    def measured_seconds(self) -> float:
        """From the start to the deadline, or to the end when `max_requests` ran out first."""
        return min(self.finished or time.perf_counter(), self.deadline) - self.started
