"""Predict images through any protocol and print the top-k.

    python -m scripts.client.predict IMAGE [IMAGE ...] [--model fashion-mnist] [--protocol rest|v1|v2|grpc|oip]
                              [--url http://127.0.0.1:8080] [--grpc-target 127.0.0.1:7070] [--topk K]
                              [--token TOKEN]   (default: $SERVE_TOKEN; for a server with authentication on)
                              [--trace]         (send a new W3C traceparent; its trace id goes to stderr)

rest: TorchServe /predictions (raw bytes) · v1: KServe v1 :predict · v2: OIP v2 REST /infer ·
grpc: TorchServe's gRPC Predictions · oip: OIP gRPC (the KServe-native runtime).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from handlers.auth import TOKEN_ENV
from scripts.client import wire
from scripts.client.wire import PredictError
from handlers.settings import ServingSettings
from scripts.serve.settings import DEFAULT_MODEL

__all__ = ["PredictError", "predict", "main"]


def predict(image: Path | bytes, model: str, base_url: str | None = None, timeout: float = 30,
            topk: int | None = None) -> dict:
    """Raw bytes to /predictions/<model>; returns {label: probability}, best first."""
    body = image if isinstance(image, bytes) else Path(image).read_bytes()
    return wire.rest_native(base_url or ServingSettings.from_env().inference_url, model, body, topk, timeout)


def predict_with(protocol: str, images: list[bytes], model: str, url: str, target: str,
                 topk: int | None, token: str | None = None, traceparent: str | None = None) -> list[dict]:
    if protocol == "rest":
        return [wire.rest_native(url, model, i, topk, token=token, traceparent=traceparent) for i in images]
    if protocol == "v1":
        return wire.rest_v1(url, model, images, topk, token, traceparent)
    if protocol == "v2":
        return wire.rest_v2(url, model, images, topk, token, traceparent)
    if protocol == "grpc":
        return [wire.grpc_native(target, model, i, token=token, traceparent=traceparent) for i in images]
    return wire.grpc_oip(target, model, images, topk, token, traceparent)


def format_topk(topk: dict) -> str:
    return "\n".join(f"  {p:8.4f}  {label}" for label, p in topk.items())


def main(argv=None) -> int:
    settings = ServingSettings.from_env()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--protocol", choices=wire.PROTOCOLS, default="rest")
    p.add_argument("--url", default=settings.inference_url, help="REST base URL")
    p.add_argument("--grpc-target", default=f"{settings.host}:{settings.grpc_inference_port}")
    p.add_argument("--topk", type=int, default=None)
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                   help=f"bearer token for a server with authentication on (default: ${TOKEN_ENV})")
    p.add_argument("--trace", action="store_true",
                   help="send a new W3C traceparent, so a tracing server's spans form one trace; prints its "
                        "trace id to stderr (look it up in Jaeger: make traces)")
    args = p.parse_args(argv)
    missing = [str(i) for i in args.images if not i.is_file()]
    if missing:
        print(f"predict: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 1
    traceparent = None
    if args.trace:
        trace_id, traceparent = wire.new_traceparent()
        print(f"trace id: {trace_id}", file=sys.stderr)
    try:
        results = predict_with(args.protocol, [i.read_bytes() for i in args.images], args.model,
                               args.url, args.grpc_target, args.topk, args.token, traceparent)
    except PredictError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 1
    for image, topk in zip(args.images, results):
        print(f"{image}:\n{format_topk(topk)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
