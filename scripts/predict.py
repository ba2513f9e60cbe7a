"""Predict one or more images through TorchServe's native REST API and print the top-k.

    python -m scripts.predict IMAGE [IMAGE ...] [--model fashion-mnist] [--url http://127.0.0.1:8080]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import requests

from scripts.settings import ServingSettings


class PredictError(RuntimeError):
    pass


def predict(image: Path | bytes, model: str, base_url: str | None = None, timeout: float = 30) -> dict:
    """POST raw image bytes to /predictions/<model>; returns {label: probability}, best first."""
    url = f"{(base_url or ServingSettings.from_env().inference_url).rstrip('/')}/predictions/{model}"
    body = image if isinstance(image, bytes) else Path(image).read_bytes()
    try:
        r = requests.post(url, data=body, headers={"Content-Type": "application/octet-stream"},
                          timeout=timeout)
    except requests.RequestException as e:
        raise PredictError(f"cannot reach {url}: {e}") from None
    try:
        payload = r.json()
    except ValueError:
        payload = {"error": r.text.strip() or r.reason}
    if r.status_code != 200:
        message = payload.get("error") or payload.get("message") or payload
        raise PredictError(f"HTTP {r.status_code} from {url}: {message}")
    return payload


def format_topk(topk: dict) -> str:
    return "\n".join(f"  {p:8.4f}  {label}" for label, p in topk.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default="fashion-mnist")
    p.add_argument("--url", default=None, help="inference base URL (default from SERVE_* settings)")
    args = p.parse_args(argv)
    status = 0
    for image in args.images:
        try:
            if not image.is_file():
                raise PredictError(f"no such file: {image}")
            print(f"{image}:\n{format_topk(predict(image, args.model, args.url))}")
        except PredictError as e:
            print(f"predict: error: {image}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
