"""What abuse costs each runtime: peak memory (RSS of the server's whole process group) and the
answers, for the cases the request limits exist for (handlers/settings.py RequestLimits):

  max-size    16 requests at once, each one image of the largest accepted size (a full body);
              again with as many as the KServe-native runtime admits at once (max_inflight)
  oversize    16 requests at once declaring 64 MiB bodies (refused by size)
  burst       400 small requests at once (the queue and the in-flight cap answer 503)
  slow        16 uploads that stall after 10 bytes, and meanwhile one normal request

    python -m scripts.harness.bench.abuse [--checkpoint runs/fashion-mnist/model.pt] [--out docs/bench]

Runtimes: kserve-native, torchserve, and torchserve-auth (TorchServe behind its exporter's
authenticating proxy, handlers/auth_proxy.py, every request with a good token: the proxy reads each
body before TorchServe, so its memory and limits are measured too).

Writes <out>/abuse.{md,json}. Loopback only, bounded: every request has a timeout and the slow
uploads stop after --slow-seconds."""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from tqdm import tqdm

from handlers.auth import bearer
from handlers.limits import DEFAULT_MAX_BYTES
from handlers.settings import RequestLimits
from scripts.harness import machine
from scripts.serve import archive
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from scripts.serve.settings import DEFAULT_CHECKPOINT, DEFAULT_MODEL, loopback_settings
from scripts.serve.torchserve import TorchServe

RUNTIMES = ("kserve-native", "torchserve", "torchserve-auth")
TOKEN = "abuse-token-3c7f"  # torchserve-auth's one accepted token


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in the group (the server and its workers)."""
    total_kib = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            rss = next(line for line in (status.parent / "status").read_text().splitlines() if line.startswith("VmRSS:"))
            total_kib += int(rss.split()[1])
        except (OSError, StopIteration, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return total_kib / 1024


class PeakRSS:
    """Samples the group's RSS every 20 ms while in use: (before, peak)."""

    def __init__(self, pgid: int):
        self.pgid, self.peak, self.stop = pgid, 0.0, threading.Event()
        self.before = group_rss_mib(pgid)

    def __enter__(self):
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, group_rss_mib(self.pgid))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def largest_image(max_bytes: int) -> bytes:
    """A real PNG (noise: it does not compress) just under the per-image byte limit."""
    side = int((max_bytes / 3) ** 0.5) - 8
    rng = np.random.default_rng(0)
    while True:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=0)
        if len(buf.getvalue()) <= max_bytes:
            return buf.getvalue()
        side -= 16


def v1_body(image: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()


def post(url: str, body: bytes, timeout: float = 120, headers: dict[str, str] | None = None) -> int:
    try:
        return requests.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                             timeout=timeout).status_code
    except requests.Timeout:  # before ConnectionError: ConnectTimeout is both
        return -2
    except requests.ConnectionError:
        return -1
    except requests.RequestException:
        return -3


def post_head(host: str, path: str, length: int, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {length}\r\n\r\n").encode()


def declared_only(host: str, port: int, path: str, length: int, headers: dict[str, str] | None = None) -> int:
    """Headers declaring `length` bytes, then the server's status (-1: closed without one)."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(post_head(host, path, length, headers))
        s.sendall(b"x" * 65536)
        try:
            head = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return -1
    return int(head.split()[1]) if head.startswith(b"HTTP/") else -1


def stalled(host: str, port: int, path: str, length: int, seconds: float,
            headers: dict[str, str] | None = None) -> int:
    """10 bytes of a `length`-byte body, then nothing: the status the server answers (-2: none
    within `seconds`)."""
    with socket.create_connection((host, port), timeout=seconds) as s:
        s.sendall(post_head(host, path, length, headers) + b'{"instance')
        try:
            head = s.recv(4096)
        except socket.timeout:
            return -2
        except ConnectionResetError:
            return -1
    return int(head.split()[1]) if head.startswith(b"HTTP/") else -1


def at_once(fn, n: int) -> tuple[Counter, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        statuses = Counter(pool.map(lambda _: fn(), range(n)))
    return statuses, time.perf_counter() - started


def measure(server, pgid: int, host: str, port: int, path: str, small: bytes, big: bytes,
            slow_seconds: float, say, headers: dict[str, str] | None = None) -> list[dict]:
    url = f"http://{host}:{port}{path}"

    def post_(body: bytes, timeout: float = 120) -> int:
        return post(url, body, timeout, headers)
    rows = []
    size = f"one {len(big) / 2**20:.1f} MiB image each ({len(v1_body(big)) / 2**20:.1f} MiB body)"
    inflight = RequestLimits.from_env().max_inflight
    cases = [
        ("max-size", f"16 at once, {size}", lambda: at_once(lambda: post_(v1_body(big)), 16)),
        (f"max-size ×{inflight}", f"{inflight} at once, {size}",
         lambda: at_once(lambda: post_(v1_body(big)), inflight)),
        ("oversize", "16 at once declaring 64 MiB bodies",
         lambda: at_once(lambda: declared_only(host, port, path, 64 * 2**20, headers), 16)),
        ("burst", "400 small requests at once", lambda: at_once(lambda: post_(v1_body(small)), 400)),
    ]
    for name, what, run in cases:
        say(f"{server}: {name}")
        with PeakRSS(pgid) as rss:
            statuses, took = run()
        rows.append({"case": name, "what": what, "statuses": dict(sorted(statuses.items())), "seconds": round(took, 2),
                     "rss_before_mib": round(rss.before, 1), "rss_peak_mib": round(rss.peak, 1),
                     "rss_added_mib": round(rss.peak - rss.before, 1),
                     "served_after": post_(v1_body(small), timeout=30)})
    say(f"{server}: slow")
    with PeakRSS(pgid) as rss:
        with ThreadPoolExecutor(17) as pool:
            slow = [pool.submit(stalled, host, port, path, 1 << 20, slow_seconds, headers) for _ in range(16)]
            time.sleep(1)
            started = time.perf_counter()
            normal = post_(v1_body(small), timeout=slow_seconds)
            normal_s = time.perf_counter() - started
            statuses = Counter(f.result() for f in slow)
    rows.append({"case": "slow", "what": f"16 uploads stalled after 10 bytes (watched {slow_seconds:.0f} s), "
                                         "one normal request meanwhile",
                 "statuses": dict(sorted(statuses.items())), "normal_request": normal,
                 "normal_request_seconds": round(normal_s, 2), "rss_before_mib": round(rss.before, 1),
                 "rss_peak_mib": round(rss.peak, 1), "rss_added_mib": round(rss.peak - rss.before, 1),
                 "served_after": post_(v1_body(small), timeout=30)})
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    p.add_argument("--slow-seconds", type=float, default=40.0,
                   help="how long the stalled uploads wait for an answer (above the body timeout)")
    return p


STATUS_NAMES = {-1: "closed", -2: "no answer", -3: "client error"}


def statuses_text(statuses: dict) -> str:
    return ", ".join(f"{n}× {STATUS_NAMES.get(int(s), s)}" for s, n in statuses.items())


def write_report(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "abuse.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = ["# Abuse: answers and peak memory of each runtime", "",
             f"- date: {result['date']}", f"- command: `{result['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; git {m['commit']}",
             f"- limits (handlers/settings.py RequestLimits, from the SERVE_* environment): {result['limits']}",
             "- memory: RSS summed over the server's process group (TorchServe: the Java frontend and "
             "its Python worker; with -auth its exporter and proxy too), sampled every 20 ms; client and server "
             "share the machine", "",
             "| runtime | case | answers | seconds | RSS before MiB | peak MiB | added MiB | next request |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for runtime, rows in result["runtimes"].items():
        for r in rows:
            answers = statuses_text(r["statuses"])
            if r["case"] == "slow":
                answers += f"; normal request meanwhile: {r['normal_request']} in {r['normal_request_seconds']} s"
            lines.append(f"| {runtime} | {r['case']}: {r['what']} | {answers} | {r.get('seconds', '')} | "
                         f"{r['rss_before_mib']} | {r['rss_peak_mib']} | {r['rss_added_mib']} | {r['served_after']} |")
    (out / "abuse.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.checkpoint.exists():
        print(f"abuse: error: no checkpoint {args.checkpoint} (make train)", file=sys.stderr)
        return 2
    say = tqdm.write if sys.stderr.isatty() else lambda m: print(m, flush=True)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine.describe(),
              "command": "python -m scripts.harness.bench.abuse " + " ".join(argv if argv is not None else sys.argv[1:]),
              "limits": vars(RequestLimits.from_env()), "runtimes": {}}
    small = Image.new("L", (28, 28), 128)
    buf = io.BytesIO()
    small.save(buf, "PNG")
    big = largest_image(DEFAULT_MAX_BYTES)
    path = f"/v1/models/{DEFAULT_MODEL}:predict"
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp:
        store = Path(tmp) / "store"
        archive.archive(args.checkpoint, store, DEFAULT_MODEL)
        for runtime in tqdm(args.runtimes, desc="runtimes", disable=not sys.stderr.isatty()):
            headers = None
            if runtime == "kserve-native":
                server = KServeRuntime(store / "model-store", Path(tmp) / runtime, *free_ports(2))
                host, port = server.host, server.http_port
            else:
                settings, token_file = loopback_settings(), None
                if runtime == "torchserve-auth":
                    token_file, headers = Path(tmp) / "tokens", bearer(TOKEN)
                    token_file.write_text(TOKEN + "\n")
                server = TorchServe(store, settings, Path(tmp) / runtime, token_file=token_file)
                host, port = settings.host, settings.inference_port
            server.start(timeout=180)
            try:
                result["runtimes"][runtime] = measure(runtime, os.getpgid(server.proc.pid), host, port, path,
                                                      buf.getvalue(), big, args.slow_seconds, say, headers)
            finally:
                server.stop()
    write_report(args.out, result)
    print(f"abuse: wrote {args.out / 'abuse.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
