"""NVIDIA's tritonclient against an Open Inference Protocol server (the KServe-native runtime).

    python -m scripts.client.triton IMAGE [IMAGE ...] [--model fashion-mnist] [--protocol rest|grpc]
                                    [--url 127.0.0.1:8085] [--grpc-target 127.0.0.1:8086] [--json]
    python -m scripts.client.triton --cases - < cases.json     # a list of calls, results as JSON

REST sends the images through the binary tensor extension (raw bytes after the JSON; --json: base64
strings in JSON) and reads the outputs in binary; gRPC sends raw contents and reads
raw_output_contents. Run it in its own process: Triton's protos and kserve's both define the
protobuf package `inference`, and one process cannot load both (protobuf refuses the duplicate
symbols), so nothing here imports kserve or the rest of the project.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

OUTPUTS = ("labels", "probabilities")
CLIENTS = {"rest": httpclient, "grpc": grpcclient}


def connect(protocol: str, url: str, grpc_target: str):
    return httpclient.InferenceServerClient(url=url) if protocol == "rest" else \
        grpcclient.InferenceServerClient(url=grpc_target)


def image_input(protocol: str, images: list[bytes], binary: bool = True):
    """One BYTES input "image": the raw images, or (REST only) base64 strings in the JSON."""
    tensor = CLIENTS[protocol].InferInput("image", [len(images)], "BYTES")
    data = np.array(images if binary else [base64.b64encode(i).decode() for i in images], dtype=np.object_)
    return tensor.set_data_from_numpy(data) if protocol == "grpc" else tensor.set_data_from_numpy(data, binary_data=binary)


def text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x  # binary BYTES come as bytes, JSON ones as str


def topk(result) -> list[dict]:
    labels, probabilities = result.as_numpy("labels"), result.as_numpy("probabilities")
    return [dict(zip(map(text, row), map(float, p))) for row, p in zip(labels, probabilities)]


def infer(client, protocol: str, model: str, images: list[bytes], binary_in: bool = True,
          binary_out: bool | None = None, outputs: list[str] | None = None) -> dict:
    """Top-k per image, and the form each output came back in (binary or json; grpc: raw or contents).
    binary_out None with no `outputs`: tritonclient's default (it asks for binary_data_output)."""
    wanted = None
    if outputs is not None or binary_out is not None:
        names = outputs or list(OUTPUTS)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=bool(binary_out)) if protocol == "rest"
                  else grpcclient.InferRequestedOutput(n) for n in names]
    result = client.infer(model, [image_input(protocol, images, binary_in)], outputs=wanted)
    if protocol == "rest":
        forms = {o["name"]: "binary" if "binary_data_size" in (o.get("parameters") or {}) else "json"
                 for o in result.get_response()["outputs"]}
    else:
        response = result.get_response()
        forms = {o.name: "raw" if response.raw_output_contents else "contents" for o in response.outputs}
    present = set(forms)
    return {"topk": topk(result) if present == set(OUTPUTS) else None, "forms": forms,
            "labels": [list(map(text, row)) for row in result.as_numpy("labels")] if "labels" in present else None}


def metadata(client, protocol: str, models: list[str]) -> dict:
    """What tritonclient reads on the way: liveness, readiness, server and model metadata."""
    def ready(model: str) -> bool | str:
        try:
            return client.is_model_ready(model)
        except InferenceServerException as e:  # gRPC: an unknown model is NOT_FOUND
            return e.status()
    out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
           "model_ready": {m: ready(m) for m in [*models, "no-such-model"]}, "models": {}}
    server = client.get_server_metadata()
    out["server_name"] = server["name"] if protocol == "rest" else server.name
    for m in models:
        meta = client.get_model_metadata(m)
        if protocol == "grpc":
            meta = {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
                    "inputs": [{"name": t.name, "datatype": t.datatype} for t in meta.inputs],
                    "outputs": [{"name": t.name, "datatype": t.datatype} for t in meta.outputs]}
        out["models"][m] = {k: meta[k] for k in ("name", "versions", "platform")} | {
            side: [(t["name"], t["datatype"]) for t in meta[side]] for side in ("inputs", "outputs")}
    return out


def run_case(case: dict, url: str, grpc_target: str) -> dict:
    """One call as the tests describe it: {"call": "infer"|"metadata"|"model_config", "protocol", ...}."""
    protocol = case["protocol"]
    client = connect(protocol, url, grpc_target)
    try:
        if case["call"] == "infer":
            images = [base64.b64decode(i) for i in case["images"]]
            return infer(client, protocol, case["model"], images, case.get("binary_in", True),
                         case.get("binary_out"), case.get("outputs"))
        if case["call"] == "metadata":
            return metadata(client, protocol, case["models"])
        if case["call"] == "model_config":
            client.get_model_config(case["model"])
            return {}
        raise ValueError(f"unknown call {case['call']!r}")
    except InferenceServerException as e:
        return {"error": e.message(), "status": e.status()}
    finally:
        client.close()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", type=Path)
    p.add_argument("--model", default="fashion-mnist")
    p.add_argument("--protocol", choices=sorted(CLIENTS), default="rest")
    p.add_argument("--url", default="127.0.0.1:8085", help="REST host:port (no scheme, as tritonclient takes it)")
    p.add_argument("--grpc-target", default="127.0.0.1:8086")
    p.add_argument("--json", action="store_true", help="REST: base64 strings in JSON instead of binary data")
    p.add_argument("--cases", type=argparse.FileType("r"), help="a JSON list of calls ('-': stdin); prints results")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.cases:
        print(json.dumps([run_case(c, args.url, args.grpc_target) for c in json.load(args.cases)]))
        return 0
    if not args.images:
        print("triton: error: give image files (or --cases)", file=sys.stderr)
        return 2
    try:
        images = [p.read_bytes() for p in args.images]
    except OSError as e:
        print(f"triton: error: {e}", file=sys.stderr)
        return 2
    client = connect(args.protocol, args.url, args.grpc_target)
    try:
        result = infer(client, args.protocol, args.model, images, binary_in=not args.json)
    except InferenceServerException as e:
        print(f"triton: error: {e.status()}: {e.message()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    for path, top in zip(args.images, result["topk"]):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
