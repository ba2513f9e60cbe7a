"""One benchmark point: a target at one concurrency, driven by scripts/harness/load.py for a fixed
time after a warm-up. Each answer's top-1 label is checked against the expected one for its image,
so a fast wrong answer never counts as throughput; requests still in flight at the deadline finish
but are not counted (their failures are)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Protocol

from scripts.harness.latency import quantile
from scripts.harness.load import Load, Outcome

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
    """Drive `client` with `concurrency` threads for `seconds` (bounded by `max_requests` too).
    `cpu_seconds` reads the server's CPU clock: its delta over the measured phase is shared by the
    requests sent in it."""
    def sender():
        send = client()

        def checked(i: int) -> Outcome:
            k = i % len(expected)
            return Outcome(send(k) == expected[k])
        return checked

    cpu_at_start: list[float] = []
    load = Load(sender, concurrency, seconds, max_requests, warmup_seconds,
                on_start=lambda: cpu_at_start.append(cpu_seconds() if cpu_seconds else 0.0))
    load.run()
    cpu_now = cpu_seconds() if cpu_seconds else 0.0
    point = Point(target, concurrency, load.measured_seconds)
    for s in load.samples:
        if s.status == 0:  # a failure counts even after the deadline: never hidden
            point.errors += 1
            point.first_error = point.first_error or s.error
        elif s.done > load.deadline:
            continue
        elif s.ok:
            point.latencies.append(s.seconds)
        else:
            point.wrong += 1
    if cpu_seconds and load.sent:
        point.server_cpu_ms = 1e3 * (cpu_now - cpu_at_start[0]) / load.sent
    return point


def aggregate(rounds: list[dict]) -> dict:
    """One point from its rounds: medians, the throughput's spread, errors summed."""
    if len(rounds) == 1:
        return rounds[0]
    med = lambda key: None if rounds[0].get(key) is None else statistics.median(r[key] for r in rounds)  # noqa: E731
    rps = [r["throughput_rps"] for r in rounds]
    first_error = next((r["first_error"] for r in rounds if r.get("first_error")), "")
    return {"target": rounds[0]["target"], "concurrency": rounds[0]["concurrency"], "repeats": len(rounds),
            "seconds": round(sum(r["seconds"] for r in rounds), 3), "requests": sum(r["requests"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds), "wrong": sum(r["wrong"] for r in rounds),
            "throughput_rps": round(statistics.median(rps), 1), "throughput_min": min(rps), "throughput_max": max(rps),
            **{k: round(med(k), 3) for k in ("p50_ms", "p95_ms", "p99_ms")},
            "server_cpu_ms": None if med("server_cpu_ms") is None else round(med("server_cpu_ms"), 3),
            **({"first_error": first_error} if first_error else {})}
