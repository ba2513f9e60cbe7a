"""Python stubs for TorchServe's gRPC APIs, generated at build time from the protos inside the
installed TorchServe jar (TorchServe ships them nowhere else; no copies are committed).

    python -m scripts.client.grpc_stubs          # writes build/grpc_stubs/ts_grpc/*_pb2*.py

`load()` generates on first use and imports the modules."""
from __future__ import annotations

import hashlib
import importlib
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import ts

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "build" / "grpc_stubs"
PACKAGE = "ts_grpc"  # the jar's protos live under proto/, a name too generic to import as
JAR = Path(ts.__file__).parent / "frontend" / "model-server.jar"
PROTOS = ("inference", "management", "open_inference_grpc")


class StubError(RuntimeError):
    pass


def _fingerprint() -> str:
    return hashlib.sha256(JAR.read_bytes()).hexdigest()[:16]


def generate(out: Path = OUT) -> Path:
    """Extract the protos from the jar and compile them with grpcio-tools; skipped when the stubs
    for this jar already exist."""
    from grpc_tools import protoc

    stamp = out / PACKAGE / ".jar-sha256"
    fingerprint = _fingerprint()
    if stamp.exists() and stamp.read_text() == fingerprint:
        return out
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(JAR) as jar:
        src = Path(tmp) / PACKAGE
        src.mkdir()
        for name in PROTOS:
            text = jar.read(f"proto/{name}.proto").decode()
            (src / f"{name}.proto").write_text(re.sub(r'import "proto/', f'import "{PACKAGE}/', text))
        # google/rpc/status.proto is only needed to compile: googleapis-common-protos provides
        # google.rpc.status_pb2 at run time.
        (Path(tmp) / "google" / "rpc").mkdir(parents=True)
        (Path(tmp) / "google" / "rpc" / "status.proto").write_bytes(jar.read("google/rpc/status.proto"))
        (out / PACKAGE).mkdir(parents=True, exist_ok=True)
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                *(f"{PACKAGE}/{name}.proto" for name in PROTOS)]
        if protoc.main(args) != 0:
            raise StubError(f"protoc failed on the protos of {JAR}")
    (out / PACKAGE / "__init__.py").write_text('"""Generated from the TorchServe jar by scripts/client/grpc_stubs.py."""\n')
    stamp.write_text(fingerprint)
    return out


def load(out: Path = OUT) -> SimpleNamespace:
    generate(out)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return SimpleNamespace(**{f"{name}{suffix}": importlib.import_module(f"{PACKAGE}.{name}{suffix}")
                              for name in PROTOS for suffix in ("_pb2", "_pb2_grpc")})


if __name__ == "__main__":
    print(f"gRPC stubs in {generate() / PACKAGE}")
