"""What bearer-token authentication costs (handlers/auth.py, the chart's `auth`): one model served
by three servers of one runtime at once, without authentication (the default), with a token file of
one token, and with a file of 64 tokens (each request is compared with every one, in constant time).
The KServe-native runtime checks tokens itself; TorchServe is authenticated by its exporter's proxy
(handlers/auth_proxy.py), so there the cost is the proxy's extra hop. The clients send a good token
to the authenticated servers. Raw image bytes over REST (the KServe-native runtime's v1 route,
TorchServe's /predictions) or gRPC (OIP ModelInfer; TorchServe's Predictions) at each concurrency,
interleaved rounds, medians; each answer checked. Before the rounds, a request without its token
must be refused by each authenticated server (401 / UNAUTHENTICATED). Writes
<out>/auth-cost[-torchserve][-grpc].{md,json}.

    python -m scripts.harness.bench.auth_cost [--runtime kserve-native|torchserve] [--transport rest|grpc]
        [--checkpoint runs/fashion-mnist/model.pt] [--repeats 5]
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import requests

from handlers.auth import bearer
from scripts.client.wire import grpc_metadata
from scripts.harness import machine
from scripts.harness.bench import models, targets, variants
from scripts.serve import archive
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from scripts.serve.settings import DEFAULT_MODEL, loopback_settings
from scripts.serve.torchserve import TorchServe

VARIANTS = {"no authentication": 0, "bearer token, 1 in the file": 1, "bearer token, 64 in the file": 64}
RUNTIMES = {"kserve-native": "the KServe-native runtime", "torchserve": "TorchServe (behind its exporter's proxy)"}
ROUTES = {("kserve-native", "rest"): "raw bytes on the v1 route", ("kserve-native", "grpc"): "OIP gRPC ModelInfer",
          ("torchserve", "rest"): "raw bytes on /predictions", ("torchserve", "grpc"): "TorchServe's gRPC Predictions"}


def stem(runtime: str, protocol: str) -> str:
    return "auth-cost" + ("" if runtime == "kserve-native" else f"-{runtime}") + ("" if protocol == "rest" else f"-{protocol}")


def start(runtime: str, store: Path, run: Path, token_file: Path | None):
    if runtime == "torchserve":
        return TorchServe(store, loopback_settings(), run, token_file=token_file).start(timeout=240)
    env = {"SERVE_TOKEN_FILE": str(token_file)} if token_file else None
    return KServeRuntime(store / "model-store", run, *free_ports(2), extra_env=env).start(timeout=240)


def client(server, protocol: str, images: list[bytes], token: str | None):
    if isinstance(server, TorchServe):
        if protocol == "grpc":
            return targets.torchserve_grpc_client(server, DEFAULT_MODEL, images, grpc_metadata(token))
        return targets.torchserve_rest_client(server, DEFAULT_MODEL, images, bearer(token))
    if protocol == "grpc":
        return targets.kserve_grpc_client(server, DEFAULT_MODEL, images, grpc_metadata(token))
    return targets.kserve_rest_client(server, DEFAULT_MODEL, images, bearer(token))


def refusal_without_token(server, protocol: str, images: list[bytes]) -> str:
    """What a call without a token gets: 401 / UNAUTHENTICATED from an authenticated server."""
    if protocol == "grpc":
        try:
            client(server, protocol, images, None)()(0)
        except grpc.RpcError as e:
            return e.code().name
        except targets.BenchError as e:
            return str(e)
        return "served"
    if isinstance(server, TorchServe):
        url = f"{server.settings.inference_url}/predictions/{DEFAULT_MODEL}"
    else:
        url = f"{server.url}/v1/models/{DEFAULT_MODEL}:predict"
    return str(requests.post(url, data=images[0], headers={"Content-Type": "image/png"}, timeout=30).status_code)


def markdown(record: dict) -> str:
    refused = ", ".join(f"{name} {status}" for name, status in record["refused_without_token"].items())
    return variants.markdown(f"What bearer-token authentication costs {RUNTIMES[record['runtime']]}", record,
                             [f"- the authenticated servers refused a request without the token: {refused}"],
                             "no authentication")


def main(argv: list[str] | None = None) -> int:
    parser = variants.get_args_parser("python -m scripts.harness.bench.auth_cost", __doc__)
    parser.add_argument("--runtime", choices=list(RUNTIMES), default="kserve-native")
    # not --protocol: kserve, once imported, parses sys.argv for a --protocol of its own
    parser.add_argument("--transport", choices=["rest", "grpc"], default="rest")
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        print(f"auth_cost: error: no checkpoint at {args.checkpoint}: run `make train` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="auth-cost-"))
    started, host, refused = time.time(), machine.describe(), {}
    refusal = "UNAUTHENTICATED" if args.transport == "grpc" else "401"
    try:
        images = models.fashion_mnist_images(args.data_dir, 32)
        archive.archive(args.checkpoint, work / "store", DEFAULT_MODEL)
        with contextlib.ExitStack() as stack:
            plan = []
            for name, count in VARIANTS.items():
                run = work / f"tokens-{count}"
                run.mkdir()
                token_file, token = None, None
                if count:
                    tokens = [secrets.token_hex(24) for _ in range(count)]
                    token_file, token = run / "tokens", tokens[-1]  # the last: every compare
                    token_file.write_text("\n".join(tokens) + "\n")
                server = stack.enter_context(targets.Stopper(start(args.runtime, work / "store", run, token_file)))
                if count:
                    refused[name] = refusal_without_token(server, args.transport, images)
                    if refused[name] != refusal:
                        print(f"auth_cost: error: {name}: a request without the token got {refused[name]}, not {refusal}",
                              file=sys.stderr)
                        return 1
                plan.append((name, client(server, args.transport, images, token),
                             lambda server=server: targets.group_cpu_seconds(server.proc.pid)))
            send = plan[0][1]()
            expected = [send(i) for i in range(len(images))]
            points = variants.interleaved(plan, expected, args.concurrency, args.repeats, args.duration, "auth cost")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = variants.record("scripts.harness.bench.auth_cost", argv, started, host, args, len(images), points,
                             refused_without_token=refused, runtime=args.runtime, transport=args.transport,
                             route=ROUTES[args.runtime, args.transport])
    variants.write(args.out, stem(args.runtime, args.transport), result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
