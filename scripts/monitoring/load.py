"""A bounded load on loopback: `count` requests at most, stopped after `seconds` anyway, a few
of them bad (junk bytes → 400, unknown model → 404), from a few client threads. It measures
each good request's latency itself so Prometheus' numbers can be checked against it. Raw image
bytes (PNG) go to TorchServe's `/predictions/<model>` or, with `path=KSERVE_V1_PATH`, to the
KServe-native runtime's v1 route, which takes a raw body like TorchServe when its Content-Type
says image (without one kserve decodes the body as JSON text)."""
from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from scripts.harness.latency import quantile

TORCHSERVE_PATH = "/predictions/{model}"
KSERVE_V1_PATH = "/v1/models/{model}:predict"


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, good requests answered 200
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def quantile(self, q: float) -> float:
        return quantile(self.latencies, q)

    def summary(self) -> str:
        xs = self.latencies
        return (f"{sum(self.statuses.values())} requests in {self.seconds:.1f} s, statuses {dict(sorted(self.statuses.items()))}; "
                f"good latency min {min(xs) * 1e3:.1f} / median {statistics.median(xs) * 1e3:.1f} / "
                f"max {max(xs) * 1e3:.1f} ms" if xs else "no good requests")


def run_load(inference_url: str, model: str, images: list[bytes], count: int = 300, seconds: float = 20.0,
             bad_every: int = 20, threads: int = 4, path: str = TORCHSERVE_PATH) -> LoadResult:
    if not inference_url.startswith(("http://127.", "http://localhost")):
        raise ValueError(f"load goes to loopback only, not {inference_url}")
    result = LoadResult()
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    session_per_thread: dict[int, requests.Session] = {}

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            return
        s = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        if i % bad_every == bad_every - 1:
            if (i // bad_every) % 2 == 0:  # junk bytes: the handler rejects them (400)
                url, body = inference_url + path.format(model=model), b"junk"
            else:  # unknown model: the server answers 404
                url, body = inference_url + path.format(model="no-such-model"), images[0]
        else:
            url, body = inference_url + path.format(model=model), images[i % len(images)]
        t0 = time.perf_counter()
        try:
            status = s.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=30).status_code
        except requests.RequestException:
            status = 0
        elapsed = time.perf_counter() - t0
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 200:
            result.latencies.append(elapsed)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    result.seconds = time.monotonic() - start
    return result
