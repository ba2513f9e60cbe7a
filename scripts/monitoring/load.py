"""A bounded load on loopback for the live dashboard: `count` requests at most, stopped after
`seconds` anyway, a few of them bad (junk bytes → 400, unknown model → 404), from a few client
threads of scripts/harness/load.py. It measures each good request's latency itself so
Prometheus' numbers can be checked against it. Raw image bytes (PNG) go to TorchServe's
`/predictions/<model>` or, with `path=KSERVE_V1_PATH`, to the KServe-native runtime's v1 route,
which takes a raw body like TorchServe when its Content-Type says image (without one kserve
decodes the body as JSON text)."""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

import requests

from scripts.harness.latency import quantile
from scripts.harness.load import Load, Outcome, loopback_only

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
    loopback_only(inference_url)

    def request(i: int) -> tuple[str, bytes]:
        if i % bad_every == bad_every - 1:
            if (i // bad_every) % 2 == 0:  # junk bytes: the handler rejects them (400)
                return inference_url + path.format(model=model), b"junk"
            return inference_url + path.format(model="no-such-model"), images[0]  # unknown model: 404
        return inference_url + path.format(model=model), images[i % len(images)]

    def sender():
        session = requests.Session()

        def send(i: int) -> Outcome:
            url, body = request(i)
            try:
                status = session.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=30).status_code
            except requests.RequestException:
                status = 0
            return Outcome(status == 200, status)
        return send

    load = Load(sender, threads, seconds, max_requests=count)
    samples = load.run()
    return LoadResult(latencies=[s.seconds for s in samples if s.status == 200],
                      statuses=dict(Counter(s.status for s in samples)),
                      seconds=load.finished - load.started)
