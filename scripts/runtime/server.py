"""The KServe-native runtime's command line: load every archive of a model store and serve them.

    python -m scripts.runtime --model-store build/serve/model-store [--host 127.0.0.1]
                              [--http-port 8085] [--grpc-port 8086] [--metrics-port 8087]

Serves KServe v1 REST (`POST /v1/models/<m>:predict`), Open Inference Protocol v2 REST
(`POST /v2/models/<m>/infer`, base64 strings in a BYTES input) and v2 gRPC
(`inference.GRPCInferenceService`, raw image bytes in a BYTES input), OIP health and metadata, and
Prometheus `/metrics` on a port of its own (so a NetworkPolicy can open it to the monitoring
namespace alone, and it never needs a token). kserve's own flags (e.g. `--enable_docs_url true`)
come from its parser, a parent of ours. Request limits (body size, images per request, queue,
requests at once, body timeout) come from the SERVE_* environment (handlers/settings.py
RequestLimits), as the chart's `limits` sets them; SERVE_TOKEN_FILE turns on bearer-token
authentication (handlers/auth.py; the chart's `auth`); SERVE_CORS_ORIGIN (default: the try-it page's
local origin) is the one browser origin allowed to call it. The standard OTEL_* environment turns on
OpenTelemetry traces (scripts/runtime/tracing.py; the chart's `tracing`), off by default.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

from fastapi.exceptions import FastAPIDeprecationWarning
from kserve import model_server

from scripts.runtime.kserve_adapter import BoundModelServer
from scripts.runtime.model import INLINE_BELOW_MS, MarModel
from scripts.runtime.tracing import Tracer, TracingError
from handlers.auth import TokenFile
from handlers.settings import AuthSettings, RequestLimits, ServingSettings, SettingsError

# kserve flags this runtime does not act on: one REST process, gRPC always on, no TLS; the gRPC
# message limit is SERVE_MAX_REQUEST_BYTES, the same for REST and gRPC
UNUSED_KSERVE_FLAGS = ("--workers", "--enable_grpc", "--ssl_certfile", "--ssl_keyfile",
                       "--grpc_max_receive_message_length")


class ArchiveLoadError(RuntimeError):
    pass


# KServe sets MODEL_INIT_MODE=async where the model appears after the runtime starts (a modelcar
# sidecar links its image's /models into /mnt/models once it runs): wait for it instead of failing.
MODEL_INIT_MODE_ENV, ASYNC_WAIT_SECONDS = "MODEL_INIT_MODE", 600


def wait_for_model_store(model_store: Path, timeout: float = ASYNC_WAIT_SECONDS, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not any(Path(model_store).glob("*.mar")):
        if time.monotonic() > deadline:
            raise ArchiveLoadError(f"no .mar files in {model_store} after waiting {timeout:.0f} s "
                                   f"({MODEL_INIT_MODE_ENV}=async)")
        time.sleep(poll)


def load_models(model_store: Path, unpack_root: Path, inline_below_ms: float = 0.0,
                limits: RequestLimits | None = None, tracer: Tracer | None = None) -> list[MarModel]:
    mars = sorted(Path(model_store).glob("*.mar"))
    if not mars:
        raise ArchiveLoadError(f"no .mar files in {model_store}")
    models: dict[str, MarModel] = {}
    for mar in mars:
        try:
            model = MarModel(mar, unpack_root, inline_below_ms=inline_below_ms, limits=limits, tracer=tracer)
            if model.name in models:
                raise ValueError(f"model {model.name!r} is also in {models[model.name].mar.name}")
            model.load()
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError) as e:
            raise ArchiveLoadError(f"{mar.name}: {type(e).__name__}: {e}") from e
        models[model.name] = model
    return list(models.values())


def get_args_parser(settings: ServingSettings | None = None) -> argparse.ArgumentParser:
    """Our flags beside kserve's (its parser is the parent: --http_port and --http-port are one
    setting, its default ours, from SERVE_KSERVE_* or ServingSettings)."""
    s = settings or ServingSettings.from_env()
    # a copy: set_defaults below changes the parent's actions, which kserve shares module-wide
    kserve_flags = copy.deepcopy(model_server.parser)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[kserve_flags], allow_abbrev=False)
    p.add_argument("--model-store", type=Path, required=True, help="directory holding the .mar files")
    p.add_argument("--host", default=s.host, help="address both listeners bind (a pod: 0.0.0.0)")
    p.add_argument("--http-port", dest="http_port", type=int, help="v1/v2 REST and the health probes")
    p.add_argument("--grpc-port", dest="grpc_port", type=int, help="OIP v2 gRPC")
    p.add_argument("--metrics-port", type=int, default=s.kserve_metrics_port, help="Prometheus /metrics")
    p.add_argument("--inline-below-ms", type=float, default=INLINE_BELOW_MS,
                   help="run a model's batches on the event loop while they take less than this on "
                        "average (0: always in a worker thread)")
    # after the arguments: set_defaults updates every action with that dest, kserve's included
    p.set_defaults(http_port=s.kserve_http_port, grpc_port=s.kserve_grpc_port)
    return p


def given(args: list[str], flag: str) -> bool:
    return any(a.split("=")[0] == flag for a in args)


def main(argv: list[str] | None = None) -> int:
    # kserve 0.21's endpoints use ORJSONResponse, deprecated by FastAPI: one warning per request
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated", category=FastAPIDeprecationWarning)
    argv = sys.argv[1:] if argv is None else argv
    parser = get_args_parser()
    args = parser.parse_args(argv)  # kserve's flags included: a typo stops here
    unused = [flag for flag in UNUSED_KSERVE_FLAGS if given(argv, flag)]
    if unused:
        parser.error(f"{', '.join(unused)}: not used by this runtime (one REST process, gRPC always on, no TLS; "
                     "the gRPC message limit is SERVE_MAX_REQUEST_BYTES)")
    try:
        limits, auth = RequestLimits.from_env(), AuthSettings.from_env()
        cors_origin = ServingSettings.from_env().allowed_origin  # the try-it page's (SERVE_CORS_ORIGIN)
        tracer = Tracer.from_env()
    except (SettingsError, TracingError) as e:
        print(f"kserve runtime: error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kserve-runtime-") as unpack_root:
        try:
            if os.environ.get(MODEL_INIT_MODE_ENV) == "async":
                wait_for_model_store(args.model_store)
            models = load_models(args.model_store, Path(unpack_root), args.inline_below_ms, limits, tracer)
        except ArchiveLoadError as e:
            print(f"kserve runtime: error: {e}", file=sys.stderr)
            return 2
        # kserve logs a latency line per request by default; /metrics already has those timings
        latency_log = args.enable_latency_logging if given(argv, "--enable_latency_logging") else False
        tokens = TokenFile(auth.token_file) if auth.token_file else None
        try:
            BoundModelServer(args.host, limits=limits, tokens=tokens, tracer=tracer, metrics_port=args.metrics_port,
                             cors_origin=cors_origin, http_port=args.http_port, grpc_port=args.grpc_port,
                             enable_latency_logging=latency_log).start(models)
        finally:
            if tracer is not None:
                tracer.shutdown()  # sends the spans still buffered
    return 0


if __name__ == "__main__":
    sys.exit(main())
