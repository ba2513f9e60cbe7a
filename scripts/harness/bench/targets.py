"""What `make bench` measures: the serving paths (servers started on free loopback ports, stopped
by PID) and, for each, a client that keeps one connection per thread and returns the top-1 label.
Every path serves the same `.mar` (the baseline: the checkpoint it was built from)."""
from __future__ import annotations

import http.client
import json
import os
import struct
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as oip_pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from handlers.classifier import ImageClassifier
from scripts.client import grpc_stubs
from scripts.harness.bench.points import Client, Send
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import ServerError, ServerProcess, free_ports
from scripts.serve.settings import loopback_settings
from scripts.serve.torchserve import TorchServe

REPO = Path(__file__).resolve().parents[3]


class BenchError(RuntimeError):
    pass


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (a server and its
    workers), from /proc: the server's own cost per request, whoever else shares the cores."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(12) stime(13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# --- servers ------------------------------------------------------------------------------------

class FastAPIBaseline(ServerProcess):
    """scripts/harness/bench/baseline_app.py under uvicorn, as its users run it (one worker, defaults)."""

    name = "FastAPI baseline"

    def __init__(self, checkpoint: Path, run_dir: Path, port: int, torch_threads: int | None = None):
        super().__init__(run_dir, "baseline.out")
        self.checkpoint = Path(checkpoint).resolve()
        self.port = port
        self.torch_threads = torch_threads  # None: torch's default, as its users leave it

    def command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "scripts.harness.bench.baseline_app:app",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def env(self) -> dict[str, str]:
        threads = {"OMP_NUM_THREADS": str(self.torch_threads)} if self.torch_threads else {}
        return {**os.environ, "BENCH_CHECKPOINT": str(self.checkpoint), **threads}

    def cwd(self) -> Path:
        return REPO

    def ready(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False


def start_torchserve(store: Path, run_dir: Path) -> TorchServe:
    return TorchServe(store, loopback_settings(), run_dir).start(timeout=240)


def start_kserve(store: Path, run_dir: Path, extra_args: tuple[str, ...] = ()) -> KServeRuntime:
    return KServeRuntime(store / "model-store", run_dir, *free_ports(2), extra_args=extra_args).start(timeout=240)


def start_baseline(checkpoint: Path, run_dir: Path, torch_threads: int | None = None) -> FastAPIBaseline:
    return FastAPIBaseline(checkpoint, run_dir, free_ports(1)[0], torch_threads).start(timeout=120)


# --- clients: one connection per thread, top-1 label out -----------------------------------------

def top1(body: dict | list) -> str:
    """First label of a best-first {label: probability} answer (TorchServe's and the baseline's)."""
    if isinstance(body, list):  # a batch of one
        body = body[0]
    if not isinstance(body, dict) or not body or "error" in body:
        raise BenchError(f"not a prediction: {str(body)[:200]}")
    return next(iter(body))


class HTTPPost:
    """POST a prepared body per image over one keep-alive connection."""

    def __init__(self, host: str, port: int, path: str, bodies: list[bytes], content_type: list[str] | str,
                 parse: Callable[[bytes], str] = lambda b: top1(json.loads(b)), headers: dict[str, str] | None = None):
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.path, self.bodies, self.parse, self.headers = path, bodies, parse, dict(headers or {})
        self.types = content_type if isinstance(content_type, list) else [content_type] * len(bodies)

    def __call__(self, i: int) -> str:
        try:
            self.conn.request("POST", self.path, self.bodies[i], {"Content-Type": self.types[i], **self.headers})
            r = self.conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnect on the next call
            raise
        if r.status != 200:
            raise BenchError(f"HTTP {r.status}: {body[:200]!r}")
        return self.parse(body)


def multipart(image: bytes, field: str = "file", filename: str = "image.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def baseline_client(port: int, images: list[bytes]) -> Client:
    parts = [multipart(img) for img in images]
    return lambda: HTTPPost("127.0.0.1", port, "/predict", [b for b, _ in parts], [t for _, t in parts])


def torchserve_rest_client(ts: TorchServe, model: str, images: list[bytes],
                           headers: dict[str, str] | None = None) -> Client:
    s = ts.settings
    return lambda: HTTPPost(s.host, s.inference_port, f"/predictions/{model}", images, "image/png", headers=headers)


def kserve_rest_client(rt: KServeRuntime, model: str, images: list[bytes],
                       headers: dict[str, str] | None = None) -> Client:
    """Raw image bytes on the v1 route (an image content type): the runtime reads them as
    TorchServe's native protocol. `headers`: sent with each request (e.g. Authorization)."""
    return lambda: HTTPPost(rt.host, rt.http_port, f"/v1/models/{model}:predict", images, "image/png",
                            headers=headers)


def torchserve_grpc_client(ts: TorchServe, model: str, images: list[bytes],
                           metadata: tuple[tuple[str, str], ...] = ()) -> Client:
    stubs = grpc_stubs.load()
    target = f"{ts.settings.host}:{ts.settings.grpc_inference_port}"

    def connect() -> Send:
        stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(grpc.insecure_channel(target))
        requests_ = [stubs.inference_pb2.PredictionsRequest(model_name=model, input={"data": img})
                     for img in images]
        return lambda i: top1(json.loads(stub.Predictions(requests_[i], timeout=30, metadata=metadata).prediction))
    return connect


def first_bytes_element(response: oip_pb.ModelInferResponse) -> str:
    """Element [0] of the first (labels) output, from `raw_output_contents` (4-byte length, bytes)."""
    raw = response.raw_output_contents[0]
    (n,) = struct.unpack_from("<I", raw, 0)
    return raw[4:4 + n].decode()


def kserve_grpc_client(rt: KServeRuntime, model: str, images: list[bytes],
                       metadata: tuple[tuple[str, str], ...] = ()) -> Client:
    def connect() -> Send:
        stub = GRPCInferenceServiceStub(grpc.insecure_channel(rt.grpc_target))
        reqs = [oip_pb.ModelInferRequest(model_name=model, inputs=[oip_pb.ModelInferRequest.InferInputTensor(
            name="image", datatype="BYTES", shape=[1], contents=oip_pb.InferTensorContents(bytes_contents=[img]))])
            for img in images]
        return lambda i: first_bytes_element(stub.ModelInfer(reqs[i], timeout=30, metadata=metadata))
    return connect


def inprocess_client(classifier: ImageClassifier, images: list[bytes], call=lambda fn, *args: fn(*args)) -> Client:
    """The handler's own pipeline (decode → preprocess → forward → top-k), no transport; `call`
    runs it (on the thread the classifier was loaded on)."""
    def send(i: int) -> str:
        result = call(classifier.predict, [images[i]])[0]
        if not isinstance(result, dict):
            raise BenchError(str(result))
        return next(iter(result))
    return lambda: send


def load_inprocess(mar: Path, unpack_dir: Path) -> ImageClassifier:
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpack_dir)
    return ImageClassifier.load(unpack_dir)


@dataclass(frozen=True)
class Stopper:
    server: ServerProcess

    def __enter__(self):
        return self.server

    def __exit__(self, *exc):
        try:
            self.server.stop()
        except ServerError:
            pass
