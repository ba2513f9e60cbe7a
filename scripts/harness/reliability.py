"""Reliability suite: a real TorchServe on free loopback ports, over a store built by the
real archiver from a real checkpoint, put through bounded scenarios. Each scenario is a function
returning a typed result with its own pass/fail against the targets:

  bad_inputs   ~40 kinds of bad or odd requests: bad ones get a 4xx naming the problem, valid but
               odd images get the in-process answer; sent one by one (each followed by a good
               request) and then all at once mixed with good ones; no worker restart
  held_load    N concurrent clients for S seconds: zero 5xx, every answer is its request's
  overload     a burst beyond job_queue_size: fast 503s, then serving again by itself
  worker_fault SIGKILL the Python worker under load: serving again within 15 s, failures no more
               than the requests in flight
  rollout      register version 2, make it default, unregister version 1 under load: zero failures

    python -m scripts.harness.reliability --checkpoint runs/fashion-mnist/model.pt            # full
    python -m scripts.harness.reliability --checkpoint runs/fashion-mnist/model.pt --quick    # fast subset

Results: <out>/results.json and results.md (+ the server's logs); `--record docs/reliability.md`
also writes the Markdown with the machine, command and date.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import requests
from PIL import Image
from tqdm import tqdm

from scripts.serve import archive

from scripts.harness import machine
from scripts.harness.latency import quantile
from scripts.serve.settings import DEFAULT_CHECKPOINT, DEFAULT_MODEL, FrontendSettings, ModelServingSettings, loopback_settings
from scripts.serve.torchserve import TorchServe

Answer = dict[str, float]


# --- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReliabilitySettings:
    """Bounds and targets of every scenario (defaults: the full suite; `quick()`: the fast subset)."""

    model: str = DEFAULT_MODEL
    job_queue_size: int = 32  # ≥ load concurrency (no 503 under held load), ≪ overload burst
    request_timeout_s: float = 60.0  # > worker restart time: queued requests wait for the new worker
    match_tolerance: float = 1e-4  # batched vs single forward passes differ by float noise
    # held load
    load_concurrency: int = 16
    load_seconds: float = 60.0
    load_max_requests: int = 50_000
    # overload
    burst: int = 200
    fast_503_p95_s: float = 1.0
    recover_within_s: float = 10.0
    # worker fault
    fault_concurrency: int = 16
    fault_kill_after_s: float = 5.0
    fault_seconds: float = 30.0
    fault_recovery_target_s: float = 15.0
    # rollout
    rollout_concurrency: int = 8
    rollout_max_s: float = 180.0
    rollout_naive: bool = True  # also measure the naive procedure (informational)

    @classmethod
    def quick(cls) -> "ReliabilitySettings":
        return cls(load_concurrency=8, load_seconds=5.0, burst=120, fault_concurrency=8,
                   fault_kill_after_s=1.5, fault_seconds=12.0, rollout_naive=False)


# --- images and the in-process reference ------------------------------------------------------
def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A grayscale PNG written chunk by chunk (valid CRCs): any size in the header, all-black
    rows. A 20000×20000 1-bit image is 49 KB on the wire and 400 Mpx once decoded."""
    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


class Reference:
    """The served archive's own model, in process: the answer each request must get."""

    def __init__(self, mar: Path):
        from handlers.classifier import ImageClassifier  # torch: only where answers are computed

        self._tmp = tempfile.TemporaryDirectory(prefix="reliability-mar-")
        with zipfile.ZipFile(mar) as z:
            z.extractall(self._tmp.name)
        self.classifier = ImageClassifier.load(self._tmp.name)

    def answer(self, body: bytes) -> Answer:
        result = self.classifier.predict([body])[0]
        if not isinstance(result, dict):
            raise ValueError(f"the reference refuses this image: {result}")
        return result


def matches(got, expected: Answer, tol: float) -> bool:
    """Same top-1 and the same probabilities up to float noise (near-zero tail labels may swap)."""
    if not isinstance(got, dict) or not got or next(iter(got)) != next(iter(expected)):
        return False
    for label in set(got) | set(expected):
        if abs(float(got.get(label, 0.0)) - float(expected.get(label, 0.0))) > tol:
            return False
    return True


@dataclass
class Workload:
    """Real images with the answer each must get; requests rotate through them and through the
    protocols, so a response swapped between requests is caught."""

    images: list[bytes]
    expected: list[Answer]
    protocols: tuple[str, ...] = ("raw", "raw", "v1", "v2")

    @classmethod
    def from_images(cls, images: list[bytes], reference: Reference) -> "Workload":
        return cls(images, [reference.answer(b) for b in images])

    def request(self, i: int, model_path: str) -> tuple[str, dict, int]:
        """(path, requests kwargs, image index) of the i-th request."""
        k = i % len(self.images)
        body, proto = self.images[k], self.protocols[(i // len(self.images) + i) % len(self.protocols)]
        if proto == "v1":
            return f"/v1/models/{model_path}:predict", {"json": {"instances": [{"b64": b64(body)}]}}, k
        if proto == "v2":
            return f"/v2/models/{model_path}/infer", {"json": {"id": f"r{i}", "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(body)]}]}}, k
        return f"/predictions/{model_path}", {"data": body}, k


def answer_of(response: requests.Response) -> Answer | None:
    """The top-k in any protocol's body (None if the body is not a prediction)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "predictions" in body:
        return body["predictions"][0]
    if isinstance(body, dict) and "outputs" in body:
        labels, probs = body["outputs"]
        return dict(zip(labels["data"], probs["data"]))
    return body if isinstance(body, dict) else None


# --- a bounded concurrent load ----------------------------------------------------------------
@dataclass
class Sample:
    sent: float  # monotonic
    done: float
    status: int  # 0: no HTTP answer (connection error or client time-out)
    matched: bool
    version: str | None
    error: str = ""


class Load:
    """`concurrency` client threads, each with its own keep-alive session, sending until `stop()`,
    `seconds` or `max_requests`; every answer is checked against its own request's image."""

    def __init__(self, url: str, model: str, work: Workload, concurrency: int, seconds: float,
                 max_requests: int, timeout: float, tol: float):
        if not url.startswith(("http://127.", "http://localhost")):
            raise ValueError(f"load goes to loopback only, not {url}")
        self.url, self.model, self.work = url, model, work
        self.concurrency, self.seconds, self.max_requests = concurrency, seconds, max_requests
        self.timeout, self.tol = timeout, tol
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self._next = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = 0.0

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set() and time.monotonic() < self.started + self.seconds:
            with self.lock:
                if self._next >= self.max_requests:
                    return
                i, self._next = self._next, self._next + 1
                self.in_flight += 1
            path, kw, k = self.work.request(i, self.model)
            sent = time.monotonic()
            try:
                r = session.post(self.url + path, timeout=self.timeout, **kw)
                ok = r.status_code == 200 and matches(answer_of(r), self.work.expected[k], self.tol)
                sample = Sample(sent, time.monotonic(), r.status_code, ok, r.headers.get("x-model-version"),
                                "" if r.status_code == 200 else r.text[:200])
            except requests.RequestException as e:
                sample = Sample(sent, time.monotonic(), 0, False, None, f"{type(e).__name__}: {e}"[:200])
            with self.lock:
                self.in_flight -= 1
                self.samples.append(sample)

    def __enter__(self) -> "Load":
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def wait(self, progress: str | None = None) -> None:
        bar = tqdm(total=round(self.seconds), desc=progress, unit="s", leave=False) if progress else None
        while any(t.is_alive() for t in self._threads):
            time.sleep(0.5)
            if bar is not None:
                bar.n = min(bar.total, round(time.monotonic() - self.started))
                bar.set_postfix(requests=len(self.samples), refresh=True)
        if bar is not None:
            bar.close()

    def stop(self) -> None:
        self._stop.set()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.wait()


def latency_ms(samples: list[Sample], q: float) -> float:
    return round(quantile([s.done - s.sent for s in samples], q) * 1e3, 1)


# --- results ---------------------------------------------------------------------------------
@dataclass
class CaseResult:
    name: str
    expect: str  # "4xx <reason>" or "200 = in-process answer"
    status: int
    reason: str
    message: str
    ok: bool
    next_good_ok: bool  # the good request sent right after it succeeded


@dataclass
class BadInputsResult:
    cases: list[CaseResult]
    mixed_requests: int  # the mixed phase: every case at once, between good requests
    mixed_failures: list[str]
    worker_pids_before: list[int]
    worker_pids_after: list[int]
    worker_restarts: int
    passed: bool = False
    name: str = "bad_inputs"

    def summary(self) -> str:
        refused = sum(c.status >= 400 for c in self.cases)
        return (f"{len(self.cases)} kinds ({refused} refused with a 4xx, {len(self.cases) - refused} valid "
                f"but odd answered 200), {sum(not c.ok for c in self.cases)} wrong, "
                f"{sum(not c.next_good_ok for c in self.cases)} good follow-ups failed; mixed phase "
                f"{self.mixed_requests} concurrent requests, {len(self.mixed_failures)} wrong; 5xx: "
                f"{sum(c.status >= 500 for c in self.cases)}; worker restarts {self.worker_restarts}, "
                f"pids {self.worker_pids_before} → {self.worker_pids_after}")


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    statuses: dict[int, int]
    mismatched: int  # 200s whose answer is not their own request's
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    passed: bool = False
    name: str = "held_load"

    def summary(self) -> str:
        return (f"{self.concurrency} clients × {self.seconds:.0f} s: {self.requests} requests "
                f"({self.throughput_rps:.0f}/s), statuses {self.statuses}, {self.mismatched} mismatched; "
                f"latency p50 {self.p50_ms} / p95 {self.p95_ms} / p99 {self.p99_ms} / max {self.max_ms} ms")


@dataclass
class OverloadResult:
    burst: int
    job_queue_size: int
    statuses: dict[int, int]
    mismatched: int
    p50_503_ms: float
    p95_503_ms: float
    p50_200_ms: float
    message_503: str
    recovered_after_s: float  # from the burst's last answer to 5 good answers in a row
    worker_restarts: int
    passed: bool = False
    name: str = "overload"

    def summary(self) -> str:
        return (f"burst of {self.burst} at once (queue {self.job_queue_size}): statuses {self.statuses}, "
                f"503 p50 {self.p50_503_ms} / p95 {self.p95_503_ms} ms (200 p50 {self.p50_200_ms} ms); "
                f"serving again {self.recovered_after_s:.2f} s after the burst; worker restarts "
                f"{self.worker_restarts}")


@dataclass
class FaultResult:
    concurrency: int
    killed_pid: int
    new_pids: list[int]
    in_flight_at_kill: int
    failed: int
    failed_statuses: dict[int, int]
    recovery_s: float  # SIGKILL → first good answer to a request sent after it
    requests: int
    mismatched: int
    worker_restarts: int
    passed: bool = False
    name: str = "worker_fault"

    def summary(self) -> str:
        return (f"SIGKILL worker {self.killed_pid} under {self.concurrency} clients: serving again in "
                f"{self.recovery_s:.2f} s (new pid {self.new_pids}); {self.failed} failed "
                f"{self.failed_statuses} of {self.requests}, {self.in_flight_at_kill} in flight at the kill; "
                f"{self.mismatched} mismatched; restarts logged {self.worker_restarts}")


@dataclass
class RolloutResult:
    procedure: str  # "drained" (the suite's) or "naive" (informational)
    concurrency: int
    steps_s: dict[str, float]
    requests: int
    failed: int
    failed_errors: dict[str, int]
    mismatched: int
    answers_by_version: dict[str, int]
    old_version_after_switch: int  # answers from the old version to requests sent after set-default
    max_latency_ms: float
    passed: bool = False
    name: str = "rollout"

    def summary(self) -> str:
        return (f"{self.procedure}: {self.concurrency} clients, {self.requests} requests, {self.failed} failed "
                f"{self.failed_errors or ''}, {self.mismatched} mismatched, answers by version "
                f"{self.answers_by_version}, old version after the switch {self.old_version_after_switch}, "
                f"max latency {self.max_latency_ms} ms; steps {self.steps_s}")


# --- the store ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Store:
    root: Path
    v1_mar: str
    v2_mar: str  # in the model store, NOT in the snapshot: the rollout registers it


def build_store(checkpoint: Path, out: Path, rs: ReliabilitySettings,
                model_settings: ModelServingSettings | None = None) -> Store:
    """Version 1.0 in the snapshot (config with the model API on and a small queue), version 2.0
    of the same weights beside it in the model store (same answers, told apart by x-model-version)."""
    shutil.rmtree(out, ignore_errors=True)
    frontend = FrontendSettings(job_queue_size=rs.job_queue_size, enable_model_api=True)
    mar, _ = archive.archive(checkpoint, out, rs.model, version="1.0", model_settings=model_settings,
                             frontend=frontend)
    with tempfile.TemporaryDirectory(prefix="reliability-v2-") as tmp:
        v2, _ = archive.archive(checkpoint, Path(tmp), rs.model, version="2.0", model_settings=model_settings)
        v2_name = f"{rs.model}-v2.mar"
        shutil.copy2(v2, out / "model-store" / v2_name)
    return Store(out, mar.name, v2_name)


# --- scenario: bad inputs ------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    path: str  # {m}: the model
    kwargs: dict
    status: int  # expected
    reason: str = ""  # expected handler reason (4xx from the handler)
    says: str = ""  # a fragment the message must contain: it names the problem
    valid: bytes | None = None  # valid-but-odd image: expect 200 with the in-process answer


def corrupt_dds() -> bytes:
    """A DDS whose pixel-format flags (offset 80) are 0: Pillow's reader raises
    NotImplementedError, outside the errors decoders document (found by fuzzing the decoders)."""
    dds = bytearray(encode(Image.new("RGB", (8, 8), (200, 10, 10)), "DDS"))
    dds[80:84] = bytes(4)
    return bytes(dds)


def bad_input_cases(good: bytes, photo_jpeg: bytes, max_image_bytes: int, max_request_bytes: int) -> list[Case]:
    """Bad requests (4xx expected) and valid-but-odd images (200 expected), from real images."""
    img = Image.open(io.BytesIO(good)).convert("L")
    gif = io.BytesIO()
    img.save(gif, "GIF", save_all=True, append_images=[Image.new("L", img.size, 255)], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 8
    rng = np.random.default_rng(7)
    odd = {
        "1x1 PNG": encode(img.resize((1, 1))),
        "1x40000 strip PNG": encode(img.resize((1, 40_000))),
        "16-bit grayscale PNG": encode(Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)),
        "CMYK JPEG": encode(img.convert("CMYK"), "JPEG", quality=100),
        "animated GIF (2 frames)": gif.getvalue(),
        "gray+alpha PNG": encode(img.convert("LA")),
        "EXIF-rotated JPEG": encode(img.rotate(-90, expand=True), "JPEG", quality=100, exif=exif),
        "colour photo JPEG (not clothing)": photo_jpeg,
    }
    raw, json_ct = "/predictions/{m}", {"Content-Type": "application/json"}
    v1, v2 = "/v1/models/{m}:predict", "/v2/models/{m}/infer"

    def v2body(**tensor) -> dict:
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(good)], **tensor}]}

    bad = [
        Case("empty body", raw, {"data": b""}, 400, "empty_input", "no body"),
        Case("text, not an image", raw, {"data": b"hello, this is not an image"}, 400, "invalid_image", "not an image"),
        Case("random bytes", raw, {"data": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()}, 400, "invalid_image", "not an image"),
        Case("truncated JPEG", raw, {"data": photo_jpeg[: len(photo_jpeg) // 2]}, 400, "invalid_image", "truncated"),
        Case("truncated PNG", raw, {"data": good[: len(good) // 2]}, 400, "invalid_image", "could not be decoded"),
        Case("PNG signature only", raw, {"data": good[:8]}, 400, "invalid_image", "image"),
        Case("DDS with pixel-format flags 0 (Pillow raises NotImplementedError)", raw,
             {"data": corrupt_dds()}, 400, "invalid_image", "NotImplementedError"),
        Case("0x0-pixel PNG (header says 0 wide)", raw, {"data": raw_png(0, 1)}, 400, "invalid_image", "not an image"),
        Case("0-byte multipart file", raw, {"files": {"data": ("x.png", b"", "image/png")}}, 400, "empty_input", "no body"),
        Case("multipart without a file", raw, {"files": {"topk": (None, "3")}}, 400, "empty_input", "no body"),
        Case("20000x20000 PNG bomb (49 KB)", raw, {"data": raw_png(20_000, 20_000, bit_depth=1)}, 413, "image_too_large", "pixel"),
        Case("raw image over the byte limit", raw, {"data": good + b"\0" * (max_image_bytes + 1)}, 413, "image_too_large", "byte limit"),
        Case("body over the request-size limit", raw, {"data": b"\0" * (max_request_bytes + 1024)}, 413, "", "Too Large"),
        Case("huge base64 (8.4 MB)", raw, {"json": {"b64": "A" * (max_image_bytes * 4 // 3 + 4096)}}, 413, "image_too_large", "limit"),
        Case("malformed JSON", raw, {"data": b'{"b64": ', "headers": json_ct}, 400, "malformed_request", "not valid JSON"),
        Case("JSON nested 100000 deep", raw, {"data": b"[" * 100_000, "headers": json_ct}, 400, "malformed_request", "not valid JSON"),
        Case("JSON array body", raw, {"json": [1, 2, 3]}, 400, "unsupported_payload", "unsupported request body"),
        Case("JSON object without an image", raw, {"json": {"pixels": [0, 1]}}, 400, "unsupported_payload", "unsupported request body"),
        Case("b64 not base64", raw, {"json": {"b64": "@@ not base64 @@"}}, 400, "invalid_base64", "not valid base64"),
        Case("b64 of non-image bytes", raw, {"json": {"b64": b64(b"hello")}}, 400, "invalid_image", "not an image"),
        Case("b64 is a number", raw, {"json": {"b64": 12345}}, 400, "unsupported_payload", "base64 string"),
        Case("topk not an integer", raw, {"data": good, "headers": {"X-TopK": "many"}}, 400, "invalid_option", "topk"),
        Case("topk out of range", raw, {"data": good, "headers": {"X-TopK": "0"}}, 400, "invalid_option", "topk"),
        Case("v1 instances not a list", v1, {"json": {"instances": "x"}}, 400, "malformed_request", "instances"),
        Case("v1 instances empty", v1, {"json": {"instances": []}}, 400, "malformed_request", "non-empty"),
        Case("v1 65 instances", v1, {"json": {"instances": [b64(good)] * 65}}, 400, "malformed_request", "at most 64"),
        Case("v1 only instance not base64", v1, {"json": {"instances": [{"b64": "@@"}]}}, 400, "invalid_base64", "instances[0]"),
        Case("v1 instance without b64 key", v1, {"json": {"instances": [{"image": b64(good)}]}}, 400, "unsupported_payload", "instances[0]"),
        Case("v1 parameters not an object", v1, {"json": {"instances": [b64(good)], "parameters": "topk=3"}}, 400, "malformed_request", "parameters"),
        Case("v2 datatype FP32", v2, {"json": v2body(datatype="FP32", data=[0.5])}, 400, "malformed_request", "BYTES"),
        Case("v2 shape [3] for 1 element", v2, {"json": v2body(shape=[3])}, 400, "malformed_request", "shape"),
        Case("v2 shape [1,1]", v2, {"json": v2body(shape=[1, 1])}, 400, "malformed_request", "shape"),
        Case("v2 two input tensors", v2, {"json": {"inputs": v2body()["inputs"] * 2}}, 400, "malformed_request", "exactly one"),
        Case("v2 no inputs", v2, {"json": {"inputs": []}}, 400, "malformed_request", "exactly one"),
        Case("v2 data element a number", v2, {"json": v2body(data=[7])}, 400, "unsupported_payload", "base64 string"),
        Case("v2 tensor parameters a list", v2, {"json": v2body(parameters=[3])}, 400, "malformed_request", "parameters"),
        Case("unknown model", "/predictions/no-such-model", {"data": good}, 404, "", "Model not found"),
        Case("unknown version", "/predictions/{m}/9.9", {"data": good}, 404, "", "does not exist"),
        Case("v1 unknown model", "/v1/models/no-such-model:predict", {"json": {"instances": [b64(good)]}}, 404, "", "Model not found"),
    ]
    return bad + [Case(name, raw, {"data": body}, 200, valid=body) for name, body in odd.items()]


def _message(r: requests.Response) -> tuple[str, str]:
    """(reason, message): our handler's JSON, TorchServe's own JSON, else the status line."""
    try:
        body = r.json()
    except ValueError:
        return "", r.reason or ""
    if isinstance(body, dict):
        return str(body.get("reason", "")), str(body.get("error") or body.get("message") or "")
    return "", r.text[:200]


def _check_case(case: Case, r: requests.Response, expected: Answer | None, tol: float) -> tuple[bool, str, str]:
    reason, message = _message(r)
    if case.valid is not None:
        return r.status_code == 200 and matches(answer_of(r), expected, tol), "", "" if r.status_code == 200 else message
    ok = r.status_code == case.status and reason == case.reason and case.says.lower() in message.lower()
    return ok, reason, message


def bad_inputs(ts: TorchServe, cases: list[Case], work: Workload, reference: Reference,
               rs: ReliabilitySettings, progress: bool = False) -> BadInputsResult:
    url = ts.settings.inference_url
    pids_before, restarts_before = ts.worker_pids(rs.model), ts.worker_restarts()
    expected = {c.name: reference.answer(c.valid) for c in cases if c.valid is not None}
    results = []
    for i, case in enumerate(tqdm(cases, desc="bad inputs", leave=False, disable=not progress)):
        session = requests.Session()  # the frontend closes the connection after some refusals (413)
        try:
            r = session.post(url + case.path.format(m=rs.model), timeout=rs.request_timeout_s, **case.kwargs)
            ok, reason, message = _check_case(case, r, expected.get(case.name), rs.match_tolerance)
            status = r.status_code
        except requests.RequestException as e:  # e.g. the connection reset: a failure
            ok, reason, message, status = False, "", f"{type(e).__name__}: {e}", 0
        path, kw, k = work.request(i, rs.model)
        try:
            good = requests.post(url + path, timeout=rs.request_timeout_s, **kw)
            next_ok = good.status_code == 200 and matches(answer_of(good), work.expected[k], rs.match_tolerance)
        except requests.RequestException:
            next_ok = False
        results.append(CaseResult(case.name, "200 = in-process answer" if case.valid is not None else
                                  f"{case.status} {case.reason}".strip(), status, reason, message[:240], ok, next_ok))

    # Mixed phase: every case at once between good requests, so they share the server's batches:
    # a bad request must never change the answer of the good ones batched with it.
    calls: list[tuple[str, str, dict, Callable[[requests.Response], bool]]] = []
    for j, case in enumerate(cases):
        calls.append((case.name, case.path.format(m=rs.model), case.kwargs,
                      lambda r, c=case: _check_case(c, r, expected.get(c.name), rs.match_tolerance)[0]))
        path, kw, k = work.request(j, rs.model)
        calls.append((f"good #{k} ({path.split('/')[1]})", path, kw,
                      lambda r, k=k: r.status_code == 200 and matches(answer_of(r), work.expected[k], rs.match_tolerance)))

    def call(c) -> str | None:
        name, path, kw, check = c
        try:
            r = requests.post(url + path, timeout=rs.request_timeout_s, **kw)
        except requests.RequestException as e:
            return f"{name}: {type(e).__name__}"
        return None if check(r) else f"{name}: HTTP {r.status_code} {r.text[:120]}"

    with ThreadPoolExecutor(16) as pool:
        mixed_failures = [f for f in pool.map(call, calls) if f]
    pids_after = ts.worker_pids(rs.model)
    res = BadInputsResult(results, len(calls), mixed_failures, pids_before, pids_after,
                          ts.worker_restarts() - restarts_before)
    res.passed = (all(c.ok and c.next_good_ok for c in results) and not mixed_failures
                  and pids_before == pids_after and res.worker_restarts == 0
                  and not any(c.status >= 500 for c in results))
    return res


# --- scenario: held load ------------------------------------------------------------------------------
def held_load(ts: TorchServe, work: Workload, rs: ReliabilitySettings, progress: bool = False) -> LoadResult:
    load = Load(ts.settings.inference_url, rs.model, work, rs.load_concurrency, rs.load_seconds,
                rs.load_max_requests, rs.request_timeout_s, rs.match_tolerance)
    with load:
        load.wait(f"load {rs.load_concurrency}×{rs.load_seconds:.0f}s" if progress else None)
    s = load.samples
    elapsed = max(x.done for x in s) - load.started
    statuses = dict(sorted(Counter(x.status for x in s).items()))
    mismatched = sum(x.status == 200 and not x.matched for x in s)
    res = LoadResult(rs.load_concurrency, round(elapsed, 1), len(s), statuses, mismatched, len(s) / elapsed,
                     latency_ms(s, 0.5), latency_ms(s, 0.95), latency_ms(s, 0.99), latency_ms(s, 1.0))
    res.passed = statuses.keys() == {200} and mismatched == 0
    return res


# --- scenario: overload ---------------------------------------------------------------------------------
def serving_again(url: str, work: Workload, rs: ReliabilitySettings, within: float, in_a_row: int = 5) -> float:
    """Seconds until `in_a_row` good requests in a row get their own answer (inf if not within)."""
    start, streak, i = time.monotonic(), 0, 0
    session = requests.Session()
    while time.monotonic() - start < within:
        path, kw, k = work.request(i, rs.model)
        i += 1
        try:
            r = session.post(url + path, timeout=rs.request_timeout_s, **kw)
            streak = streak + 1 if r.status_code == 200 and matches(answer_of(r), work.expected[k], rs.match_tolerance) else 0
        except requests.RequestException:
            streak = 0
        if streak >= in_a_row:
            return time.monotonic() - start
        if streak == 0:
            time.sleep(0.05)
    return float("inf")


def overload(ts: TorchServe, work: Workload, rs: ReliabilitySettings) -> OverloadResult:
    url, pids, restarts = ts.settings.inference_url, ts.worker_pids(rs.model), ts.worker_restarts()
    # Connections are opened before the barrier so the burst reaches the frontend at once.
    gate = threading.Barrier(rs.burst)
    samples: list[tuple[int, float, bool, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        session = requests.Session()
        path, kw, k = work.request(i, rs.model)
        try:
            session.get(f"{url}/ping", timeout=rs.request_timeout_s)
        except requests.RequestException:
            pass
        gate.wait()
        t0 = time.monotonic()
        try:
            r = session.post(url + path, timeout=rs.request_timeout_s, **kw)
            item = (r.status_code, time.monotonic() - t0,
                    r.status_code == 200 and matches(answer_of(r), work.expected[k], rs.match_tolerance),
                    "" if r.status_code == 200 else _message(r)[1])
        except requests.RequestException as e:
            item = (0, time.monotonic() - t0, False, type(e).__name__)
        with lock:
            samples.append(item)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(rs.burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(rs.request_timeout_s * 2)
    recovered = serving_again(url, work, rs, rs.recover_within_s * 3)

    def q(status: int, p: float) -> float:
        return round(quantile([x[1] for x in samples if x[0] == status], p) * 1e3, 1)

    statuses = dict(sorted(Counter(x[0] for x in samples).items()))
    mismatched = sum(x[0] == 200 and not x[2] for x in samples)
    msg = next((x[3] for x in samples if x[0] == 503), "")
    res = OverloadResult(rs.burst, rs.job_queue_size, statuses, mismatched, q(503, 0.5), q(503, 0.95), q(200, 0.5),
                         msg[:200], round(recovered, 2), ts.worker_restarts() - restarts)
    res.passed = (set(statuses) <= {200, 503} and statuses.get(503, 0) > 0 and mismatched == 0
                  and res.p95_503_ms <= rs.fast_503_p95_s * 1e3 and recovered <= rs.recover_within_s
                  and res.worker_restarts == 0 and ts.worker_pids(rs.model) == pids)
    return res


# --- scenario: worker fault -----------------------------------------------------------------------------
def worker_fault(ts: TorchServe, work: Workload, rs: ReliabilitySettings, progress: bool = False) -> FaultResult:
    (pid,) = ts.worker_pids(rs.model)
    restarts = ts.worker_restarts()
    load = Load(ts.settings.inference_url, rs.model, work, rs.fault_concurrency, rs.fault_seconds,
                rs.load_max_requests, rs.request_timeout_s, rs.match_tolerance)
    with load:
        time.sleep(rs.fault_kill_after_s)
        with load.lock:  # no request starts or ends while we count what is in flight
            os.kill(pid, signal.SIGKILL)
            killed_at, in_flight = time.monotonic(), load.in_flight
        load.wait("worker fault" if progress else None)
    s = load.samples
    after = [x.done - killed_at for x in s if x.sent > killed_at and x.status == 200 and x.matched]
    failed = [x for x in s if x.status != 200]
    new = ts.worker_pids(rs.model)
    res = FaultResult(rs.fault_concurrency, pid, new, in_flight, len(failed),
                      dict(Counter(x.status for x in failed)), round(min(after), 2) if after else float("inf"),
                      len(s), sum(x.status == 200 and not x.matched for x in s), ts.worker_restarts() - restarts)
    res.passed = (res.recovery_s <= rs.fault_recovery_target_s and res.failed <= in_flight
                  and res.mismatched == 0 and pid not in new and len(new) == 1)
    return res


# --- scenario: rollout ------------------------------------------------------------------------------------
def rollout(ts: TorchServe, work: Workload, rs: ReliabilitySettings, new_mar: str, new_version: str,
            old_version: str, model_settings: ModelServingSettings | None = None, naive: bool = False,
            progress: bool = False) -> RolloutResult:
    """Register `new_mar`, make it the default, unregister `old_version`, all under load.
    naive=True: synchronous registration and an immediate unregister (what the docs suggest),
    measured to show why the suite's procedure drains first."""
    m = model_settings or ModelServingSettings()
    mgmt = ts.settings.management_url
    load = Load(ts.settings.inference_url, rs.model, work, rs.rollout_concurrency, rs.rollout_max_s,
                rs.load_max_requests, 20.0 if naive else rs.request_timeout_s, rs.match_tolerance)
    steps: dict[str, float] = {}
    with load:
        time.sleep(2.0)
        t = time.monotonic()
        if naive:
            requests.post(f"{mgmt}/models", timeout=300, params={
                "url": new_mar, "initial_workers": m.workers, "synchronous": "true", "batch_size": m.batch_size,
                "max_batch_delay": m.max_batch_delay_ms}).raise_for_status()
        else:
            ts.register(new_mar, m)
        steps["register"] = round(time.monotonic() - t, 2)
        time.sleep(1.0)
        t = time.monotonic()
        ts.set_default(rs.model, new_version)
        switched = time.monotonic()
        steps["set_default"] = round(switched - t, 3)
        t = time.monotonic()
        if naive:
            requests.delete(f"{mgmt}/models/{rs.model}/{old_version}", timeout=60).raise_for_status()
        else:
            ts.unregister(rs.model, old_version)
        steps["unregister"] = round(time.monotonic() - t, 2)
        time.sleep(3.0)  # keep serving on the new version alone for a while
        load.stop()
        load.wait()
    s = load.samples
    failed = [x for x in s if x.status != 200]
    res = RolloutResult("naive" if naive else "drained", rs.rollout_concurrency, steps, len(s), len(failed),
                        dict(Counter(x.error.split(":")[0] or str(x.status) for x in failed)),
                        sum(x.status == 200 and not x.matched for x in s),
                        dict(sorted(Counter(x.version or "none" for x in s if x.status == 200).items())),
                        sum(x.sent > switched + 0.5 and x.version == old_version for x in s),
                        latency_ms(s, 1.0))
    res.passed = (not failed and res.mismatched == 0 and res.old_version_after_switch == 0
                  and res.answers_by_version.get(new_version, 0) > 0)
    return res


# --- the suite ---------------------------------------------------------------------------------------------
@dataclass
class SuiteResult:
    mode: str
    started: str
    seconds: float
    machine: dict
    command: str
    scenarios: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scenarios if getattr(s, "procedure", "") != "naive")


TARGETS = {
    "bad_inputs": "each bad input a 4xx naming the problem, each valid-but-odd image the in-process answer, "
                  "good follow-ups all succeed, no 5xx, zero worker restarts",
    "held_load": "zero non-200, every answer its own request's",
    "overload": "only 200/503, 503 p95 ≤ {fast} ms, serving again ≤ {rec} s by itself, no restart",
    "worker_fault": "serving again ≤ {fault} s, failed ≤ requests in flight at the kill",
    "rollout": "zero failed requests, no old-version answer after the switch",
}


def to_markdown(suite: SuiteResult, rs: ReliabilitySettings, note: str = "") -> str:
    m = suite.machine
    lines = [f"# Reliability suite results ({suite.mode})", "",
             f"- date: {suite.started} ({suite.seconds:.0f} s)",
             f"- command: `{suite.command}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; Python {m['python']}, "
             f"torch {m['torch']}, TorchServe {m['torchserve']}; load average at start {m['load_average_at_start']}"
             f", at end {m.get('load_average_at_end')}",
             f"- overall: {'PASS' if suite.passed else 'FAIL'}", ""]
    if note:
        lines += [note.strip(), ""]
    targets = {k: v.format(fast=round(rs.fast_503_p95_s * 1e3), rec=rs.recover_within_s,
                           fault=rs.fault_recovery_target_s) for k, v in TARGETS.items()}
    lines += ["| scenario | target | measured | result |", "| --- | --- | --- | --- |"]
    for s in suite.scenarios:
        label = s.name + (f" ({s.procedure})" if hasattr(s, "procedure") else "")
        verdict = ("info" if getattr(s, "procedure", "") == "naive" else "PASS" if s.passed else "FAIL")
        target = "measured to justify the drained procedure" if verdict == "info" else targets[s.name]
        lines.append(f"| {label} | {target} | {s.summary().replace('|', '/')} | {verdict} |")
    bad = next((s for s in suite.scenarios if s.name == "bad_inputs"), None)
    if bad is not None:
        lines += ["", "## Bad and odd inputs", "", "| input | expected | got | reason | message | ok | next good |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in bad.cases:
            msg = c.message.replace("|", "/").replace("\n", " ")[:110]
            lines.append(f"| {c.name} | {c.expect} | {c.status} | {c.reason} | {msg} | {'✓' if c.ok else '✗'} | "
                         f"{'✓' if c.next_good_ok else '✗'} |")
        if bad.mixed_failures:
            lines += ["", "Mixed-phase failures: " + "; ".join(bad.mixed_failures)]
    return "\n".join(lines) + "\n"


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: str(o)).replace("Infinity", "null"))


def run_suite(checkpoint: Path, data_dir: Path, out: Path, rs: ReliabilitySettings, mode: str,
              command: str, progress: bool = True, note: str = "", record: Path | None = None) -> SuiteResult:
    from skimage import data as skdata

    from model import data

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    suite = SuiteResult(mode, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), 0.0, machine.describe(), command)
    model_settings = ModelServingSettings()
    say = (lambda text: tqdm.write(text)) if progress else (lambda text: None)
    say(f"reliability: building the store in {out / 'store'}")
    store = build_store(checkpoint, out / "store", rs, model_settings)
    reference = Reference(store.root / "model-store" / store.v1_mar)
    data.ensure_fashion_mnist(data_dir)
    samples = data.export_samples(data.load(DEFAULT_MODEL, data_dir, train=False), out / "samples", per_class=4)
    images = [(out / "samples" / s["file"]).read_bytes() for s in samples]
    work = Workload.from_images(images, reference)
    photo = encode(Image.fromarray(skdata.chelsea()), "JPEG", quality=90)
    cases = bad_input_cases(images[0], photo, model_settings.max_image_bytes,
                            archive.max_request_size(model_settings.max_image_bytes))
    ts = TorchServe(store.root, loopback_settings(), out / "run")
    say("reliability: starting TorchServe")
    ts.start(timeout=180)
    try:
        serving_again(ts.settings.inference_url, work, rs, 60, in_a_row=50)  # warm-up (JIT, caches)
        steps: list[tuple[str, Callable]] = [
            ("bad inputs", lambda: bad_inputs(ts, cases, work, reference, rs, progress)),
            ("held load", lambda: held_load(ts, work, rs, progress)),
            ("overload", lambda: overload(ts, work, rs)),
            ("worker fault", lambda: worker_fault(ts, work, rs, progress)),
        ]
        if mode == "full":
            steps.append(("rollout", lambda: rollout(ts, work, rs, store.v2_mar, "2.0", "1.0", model_settings,
                                                     progress=progress)))
            if rs.rollout_naive:
                steps.append(("rollout (naive, informational)",
                              lambda: rollout(ts, work, rs, store.v1_mar, "1.0", "2.0", model_settings,
                                              naive=True, progress=progress)))
        for title, step in steps:
            say(f"reliability: {title} ...")
            result = step()
            suite.scenarios.append(result)
            say(f"  {'PASS' if result.passed else 'FAIL'} {result.summary()}")
    finally:
        ts.stop()
    suite.seconds = time.monotonic() - started
    suite.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload = {**{k: v for k, v in asdict(suite).items() if k != "scenarios"}, "passed": suite.passed,
               "settings": asdict(rs), "scenarios": [{**asdict(s), "summary": s.summary()} for s in suite.scenarios]}
    (out / "results.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    markdown = to_markdown(suite, rs, note)
    (out / "results.md").write_text(markdown)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(markdown)
    return suite


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("build/reliability"), help="results, store and logs")
    p.add_argument("--quick", action="store_true", help="the fast subset (no rollout, short load)")
    p.add_argument("--load-seconds", type=float, help="held-load duration (default 60; quick 5)")
    p.add_argument("--record", type=Path, help="also write the Markdown results here (e.g. docs/reliability.md)")
    p.add_argument("--note", default="", help="text put under the header of the Markdown results")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    rs = ReliabilitySettings.quick() if args.quick else ReliabilitySettings()
    if args.load_seconds:
        rs = ReliabilitySettings(**{**asdict(rs), "load_seconds": args.load_seconds})
    if not args.checkpoint.exists():
        print(f"reliability: error: no checkpoint {args.checkpoint} (make train)", file=sys.stderr)
        return 2
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    if "--note" in shown:  # the note is printed below the header already
        i = shown.index("--note")
        del shown[i:i + 2]
    command = "python -m scripts.harness.reliability " + " ".join(shown)
    suite = run_suite(args.checkpoint, args.data_dir, args.out, rs, "quick" if args.quick else "full",
                      command.strip(), not args.no_progress, args.note, args.record)
    print(f"reliability: {'PASS' if suite.passed else 'FAIL'} in {suite.seconds:.0f} s; results in "
          f"{args.out / 'results.md'}" + (f" and {args.record}" if args.record else ""))
    return 0 if suite.passed else 1


if __name__ == "__main__":
    sys.exit(main())
