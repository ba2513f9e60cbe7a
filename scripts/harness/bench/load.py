"""Closed-loop load on loopback: `concurrency` client threads, each with its own persistent
connection, send back-to-back requests for `seconds` (after a warm-up) and time every one. Each
answer's top-1 label is checked against the expected one for its image, so a fast wrong answer
never counts as throughput."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from scripts.harness.latency import quantile

# A client sends image i and returns the top-1 label of the answer (raising on any error).
Send = Callable[[int], str]


class Client(Protocol):
    def __call__(self) -> Send:
        """A new sender with its own connection (one per client thread)."""


@dataclass
class Point:
    """One measurement: a target at one concurrency."""

    target: str
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, correct answers only
    errors: int = 0
    wrong: int = 0
    first_error: str = ""
    server_cpu_ms: float | None = None  # the server's CPU time per request sent (all its processes)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def quantile_ms(self, q: float) -> float:
        """Quantile in milliseconds (scripts/harness/latency.py's rule; NaN without data)."""
        return 1e3 * quantile(self.latencies, q)

    def to_dict(self) -> dict:
        return {"target": self.target, "concurrency": self.concurrency, "seconds": round(self.seconds, 3),
                "requests": self.ok, "errors": self.errors, "wrong": self.wrong,
                "throughput_rps": round(self.throughput, 1),
                **{f"p{q}_ms": round(self.quantile_ms(q / 100), 3) for q in (50, 95, 99)},
                "server_cpu_ms": None if self.server_cpu_ms is None else round(self.server_cpu_ms, 3),
                **({"first_error": self.first_error} if self.first_error else {})}


def run_point(target: str, client: Client, expected: list[str], concurrency: int, seconds: float,
              warmup_seconds: float = 0.5, max_requests: int = 200_000,
              cpu_seconds: Callable[[], float] | None = None) -> Point:
    """Drive `client` with `concurrency` threads for `seconds` (bounded by `max_requests` too);
    requests still in flight at the deadline finish but are not counted. `cpu_seconds` reads the
    server's CPU clock: its delta over the measured phase is shared by the requests sent in it."""
    point = Point(target, concurrency)
    lock = threading.Lock()
    clock: dict[str, float] = {}

    def begin() -> None:  # runs once, before any thread passes the barrier
        clock["cpu"] = cpu_seconds() if cpu_seconds else 0.0
        clock["start"] = time.perf_counter()
        clock["end"] = clock["start"] + seconds

    barrier = threading.Barrier(concurrency + 1, action=begin)
    sent = [0]

    def worker(w: int) -> None:
        send = client()
        i = w
        warm_until = time.perf_counter() + warmup_seconds
        while time.perf_counter() < warm_until:  # warm connections, caches and JITs
            try:
                send(i % len(expected))
            except Exception:  # noqa: BLE001 - counted in the measured phase
                pass
            i += concurrency
        barrier.wait()
        lat, errors, wrong, first_error = [], 0, 0, ""
        while True:
            t0 = time.perf_counter()
            if t0 >= clock["end"]:
                break
            with lock:  # one global round-robin over the images
                if sent[0] >= max_requests:
                    break
                k = sent[0] % len(expected)
                sent[0] += 1
            try:
                label = send(k)
            except Exception as e:  # noqa: BLE001 - any failure is a failed request, reported
                errors += 1
                first_error = first_error or f"{type(e).__name__}: {e}"[:300]
            else:
                t1 = time.perf_counter()
                if t1 > clock["end"]:
                    break
                if label == expected[k]:
                    lat.append(t1 - t0)
                else:
                    wrong += 1
        with lock:
            point.latencies.extend(lat)
            point.errors += errors
            point.wrong += wrong
            point.first_error = point.first_error or first_error

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(timeout=seconds + 60)
    point.seconds = min(time.perf_counter(), clock["end"]) - clock["start"]
    if cpu_seconds and sent[0]:
        point.server_cpu_ms = 1e3 * (cpu_seconds() - clock["cpu"]) / sent[0]
    return point
