"""Build a `.mar` with torch-model-archiver from a training checkpoint, and the KServe storage
layout beside it (<out>/config/config.properties + <out>/model-store/<name>.mar).

    python -m scripts.serve.archive --checkpoint runs/fashion-mnist/model.pt --model-name fashion-mnist
    python -m scripts.serve.archive --from-registry models:/fashion-mnist@champion --registry-uri URI

The archive carries only what serving needs: model_spec.json (labels, preprocessing spec,
architecture, serving policy, format), the handlers package and the network: with `--format
eager` (the default) weights.pt and the network's own file; with `--format torchscript|onnx|onnx-int8`
the network exported by model/export.py (checked against the eager network first; int8 calibrated
on the checkpoint's training images from `--data-dir`, else on real photos), which TorchServe runs
through the same handler and the KServe-native runtime through the same model class.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from handlers.limits import max_request_size
from handlers.spec import WEIGHTS_FILE, ArchSpec, ModelSpec
from model import checkpoint, export, nets, registry, tracking
from scripts.runtime.mar import read_manifest, read_spec
from scripts.serve import policy
from handlers.settings import ServingSettings
from scripts.serve.settings import DEFAULT_MODEL, KSERVE_MODEL_MOUNT, FrontendSettings, ModelServingSettings

log = logging.getLogger("archive")
DEFAULT_VERSION = "1.0"
POLICIES = {"light": policy.LIGHT, "heavy": policy.HEAVY, "parallel": policy.PARALLEL, "batched": policy.BATCHED}
REPO = Path(__file__).resolve().parents[2]
HANDLERS_DIR = REPO / "handlers"
HANDLER_ENTRY = HANDLERS_DIR / "torchserve_handler.py"


# Server-wide protocol configurations. "native" serves raw/multipart/JSON, KServe v1 and OIP v2
# REST on the same endpoints (our handler reads each request's envelope) plus TorchServe gRPC.
# "oip" adds TorchServe's OIP gRPC, which 0.12 offers only behind its stock kservev2 envelope;
# "v1" is TorchServe's stock kserve envelope (v1 REST only; native already serves v1 itself).
# The stock envelopes read one request per batch (so batch size 1) and break raw /predictions.
# TorchServe 0.12 reads these two keys from config.properties only (TS_* variables are ignored).
PROTOCOLS = {
    "native": {},
    "oip": {"service_envelope": "kservev2", "ts_open_inference_protocol": "true"},
    "v1": {"service_envelope": "kserve"},
}


class ArchiveError(RuntimeError):
    pass


def model_spec_from_checkpoint(ckpt: dict, name: str, version: str, topk: int = 5,
                               model_settings: ModelServingSettings | None = None,
                               fmt: str = "eager", source: dict | None = None) -> tuple[ModelSpec, Path, str]:
    """The spec, the network's file, and why it got its serving policy."""
    model_settings = model_settings or ModelServingSettings()
    arch = nets.ARCHS[ckpt["arch"]["name"]]
    preprocess = checkpoint.preprocess_spec(ckpt)
    if model_settings.policy is None:
        chosen, why = policy.choose(checkpoint.build_net(ckpt), preprocess, fmt)
    else:
        chosen, why = model_settings.policy, "policy given"
    serving = model_settings.apply(chosen)
    if serving != chosen:
        why += f", overridden: {', '.join(f'{k}={v}' for k, v in serving.to_dict().items() if getattr(chosen, k) != v)}"
    spec = ModelSpec(name=name, version=version, labels=tuple(ckpt["labels"]), topk=topk,
                     max_bytes=model_settings.max_image_bytes, max_pixels=model_settings.max_image_pixels,
                     preprocess=preprocess, serving=serving, format=fmt, source=source or {},
                     arch=ArchSpec(module=arch.file.stem, cls=arch.cls, kwargs=ckpt["arch"]["kwargs"]))
    return spec, arch.file, why


def stage(spec: ModelSpec, ckpt: dict, net_file: Path, staging: Path,
          data_dir: Path | None = None) -> tuple[Path, Path]:
    """Lay out the archive's files: returns (the network's file, extra-files directory)."""
    if spec.format == "eager":
        network = staging / WEIGHTS_FILE
        torch.save(ckpt["state_dict"], network)
    else:
        network, info = export.export_checkpoint(ckpt, spec.format, staging / "export", data_dir=data_dir)
        if "calibration" in info:
            log.info("%s: int8 calibrated on %s", spec.name, info["calibration"])
        if "accuracy" in info:
            log.info("%s: top-1 accuracy on %d labelled test images: eager %.2f%%, %s %.2f%%", spec.name,
                     info["accuracy"]["images"], 100 * info["accuracy"]["eager"], spec.format,
                     100 * info["accuracy"]["exported"])
    extra = staging / "extra"
    (extra / "handlers").mkdir(parents=True)
    for src in sorted(HANDLERS_DIR.glob("*.py")):
        # the archiver puts the entry point at the top level itself; the exporter and its
        # authenticating proxy run beside TorchServe, never in a worker
        if src in (HANDLER_ENTRY, HANDLERS_DIR / "exporter.py", HANDLERS_DIR / "auth_proxy.py"):
            continue
        shutil.copy2(src, extra / "handlers" / src.name)
    if spec.format == "eager":  # an exported network needs no Python class
        shutil.copy2(net_file, extra / net_file.name)
    spec.save(extra)
    return network, extra


def build_mar(spec: ModelSpec, ckpt: dict, net_file: Path, model_store: Path, data_dir: Path | None = None) -> Path:
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archive-") as tmp:
        network, extra = stage(spec, ckpt, net_file, Path(tmp), data_dir)
        cmd = [sys.executable, "-m", "model_archiver.model_packaging",
               "--model-name", spec.name, "--version", spec.version,
               "--serialized-file", str(network), "--handler", str(HANDLER_ENTRY),
               "--extra-files", str(extra), "--export-path", str(model_store), "--force"]
        # The archiver stages files in $TMPDIR/<model name>: two archives of one name built at the
        # same time (tests beside a benchmark) would share it. Give each run its own.
        env = {**os.environ, "TMPDIR": str(Path(tmp) / "archiver-tmp")}
        (Path(tmp) / "archiver-tmp").mkdir()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise ArchiveError(f"torch-model-archiver failed ({proc.returncode}):\n{proc.stderr}")
    mar = model_store / f"{spec.name}.mar"
    if not mar.exists():
        raise ArchiveError(f"torch-model-archiver reported success but wrote no {mar}")
    return mar


def config_properties(model_store: Path, settings: ServingSettings,
                      model_settings: ModelServingSettings, protocol: str = "native",
                      frontend: FrontendSettings | None = None) -> str:
    """TorchServe config for every `.mar` in the store, in KServe's storage layout: each model's
    workers and batching from its archive's serving policy (fields given in `model_settings`
    override it). Defaults that TorchServe 0.12 gets wrong for serving are set on purpose (see the
    comments)."""
    frontend = frontend or FrontendSettings()
    if protocol not in PROTOCOLS:
        raise ArchiveError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
    models = {}
    for mar in sorted(model_store.glob("*.mar")):
        m = read_manifest(mar)["model"]
        serving = model_settings.apply(read_spec(mar).serving)
        models.setdefault(m["modelName"], {})[m["modelVersion"]] = {
            "defaultVersion": True, "marName": mar.name,
            "minWorkers": serving.torchserve_worker_count, "maxWorkers": serving.torchserve_worker_count,
            "batchSize": 1 if PROTOCOLS[protocol] else serving.batch_size,
            "maxBatchDelay": serving.max_batch_delay_ms,
            "responseTimeout": model_settings.response_timeout_s,
        }
    if not models:
        raise ArchiveError(f"no .mar files in {model_store}")
    snapshot = {"name": "startup.cfg", "modelCount": sum(len(v) for v in models.values()),
                "models": models}
    lines = ["# Generated by scripts/serve/archive.py from handlers/settings.py and scripts/serve/settings.py: regenerate, do not edit.",
             "# Listeners: overridden at run time by TS_* environment variables (make serve does;",
             "# a pod binds 0.0.0.0 the same way)."]
    lines += [f"{k}={v}" for k, v in settings.torchserve_properties().items()]
    lines += [
        "enable_envvars_config=true",
        "# Prometheus text on the metrics port (TorchServe's default is log files only), including",
        "# the handler's own metrics (handlers/metrics.py).",
        "metrics_mode=prometheus",
        "model_metrics_auto_detect=true",
        "# Models are fixed at start-up from model_snapshot: no registration over HTTP (the",
        "# reliability suite's rollout turns it on for its own server).",
        f"enable_model_api={str(frontend.enable_model_api).lower()}",
        "# Jobs queued per model beyond this get an immediate 503 instead of waiting.",
        f"job_queue_size={frontend.job_queue_size}",
        "# Token auth off: listeners are loopback locally; in a cluster the management port is",
        "# never exposed by a Service and a NetworkPolicy guards the pod.",
        "disable_token_authorization=true",
        "install_py_dep_per_model=false",
        "# Room for the largest accepted image as base64 JSON; the handler enforces the per-image",
        "# byte and pixel limits (model_spec.json) with a 413 that names them.",
        f"max_request_size={max_request_size(model_settings.max_image_bytes)}",
        f"max_response_size={max_request_size(model_settings.max_image_bytes)}",
        f"model_store={KSERVE_MODEL_MOUNT}/model-store",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
        f"# protocol configuration: {protocol}",
        *(f"{k}={v}" for k, v in PROTOCOLS[protocol].items()),
    ]
    return "\n".join(lines) + "\n"


def write_config(out: Path, settings: ServingSettings | None = None,
                 model_settings: ModelServingSettings | None = None, protocol: str = "native",
                 frontend: FrontendSettings | None = None) -> Path:
    path = out / "config" / "config.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_properties(out / "model-store", settings or ServingSettings(),
                                      model_settings or ModelServingSettings(), protocol, frontend))
    return path


def archive(checkpoint_path: Path, out: Path, name: str, version: str = DEFAULT_VERSION, topk: int = 5,
            model_settings: ModelServingSettings | None = None, protocol: str = "native",
            frontend: FrontendSettings | None = None, fmt: str = "eager",
            source: dict | None = None, data_dir: Path | None = None) -> tuple[Path, Path]:
    model_settings = model_settings or ModelServingSettings()
    ckpt = checkpoint.load(checkpoint_path)
    spec, net_file, why = model_spec_from_checkpoint(ckpt, name, version, topk, model_settings, fmt, source)
    log.info("%s v%s (%s): %s: %s", name, version, fmt, why, spec.serving)
    mar = build_mar(spec, ckpt, net_file, out / "model-store", data_dir)
    # the policy is in the archive now: the config reads it from there (no override twice)
    return mar, write_config(out, model_settings=ModelServingSettings(response_timeout_s=model_settings.response_timeout_s),
                             protocol=protocol, frontend=frontend)


def archive_registered(model_uri: str, registry_uri: str, out: Path, name: str | None = None,
                       version: str | None = None, **kwargs) -> tuple[Path, Path]:
    """Archive the registry's version that `model_uri` names now: served under the registered
    model's name and its version number (responses and metrics report it), with the registry, the
    version, its run and the alias in model_spec.json's "source"."""
    found = registry.resolve(model_uri, registry_uri)
    with tempfile.TemporaryDirectory(prefix="registry-") as tmp:
        ckpt = registry.download_checkpoint(found, Path(tmp))
        return archive(ckpt, out, name or found.name, version or found.version, source=found.to_dict(), **kwargs)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path)
    src.add_argument("--from-registry", metavar="MODEL_URI",
                     help="models:/<name>@<alias> or models:/<name>/<version> from the MLflow registry")
    p.add_argument("--registry-uri", default=None,
                   help="the MLflow registry (default: $MLFLOW_TRACKING_URI or the local ./mlruns store)")
    p.add_argument("--model-name", default=None,
                   help=f"served name (default: {DEFAULT_MODEL}, or the registered model's name)")
    p.add_argument("--version", default=None, help=f"served version (default: {DEFAULT_VERSION}, or the registry's version)")
    p.add_argument("--topk", type=int, default=5, help="labels returned per prediction by default")
    p.add_argument("--out", type=Path, default=Path("build/serve"), help="storage layout root")
    p.add_argument("--format", choices=["eager", *export.FORMATS], default="eager",
                   help="eager: the state dict and the network's Python file; torchscript, onnx or onnx-int8: "
                        "the exported network (model/export.py), ONNX run by ONNX Runtime")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="onnx-int8: calibrate on the checkpoint's training images from here (else on real photos)")
    p.add_argument("--policy", choices=["auto", *POLICIES], default="auto",
                   help="serving policy (scripts/serve/policy.py); auto: from the model's FLOPs per image")
    p.add_argument("--workers", type=int, help="forward passes at once (default: the policy's, as below)")
    p.add_argument("--batch-size", type=int, help="images per forward pass at most")
    p.add_argument("--max-batch-delay-ms", type=int, help="TorchServe's wait for a batch to fill")
    p.add_argument("--torch-threads", type=int, help="intra-op threads per forward pass")
    p.add_argument("--channels-last", choices=["true", "false"], help="memory format on the CPU")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="native",
                   help="native: REST native + KServe v1 + OIP v2 REST + TorchServe gRPC; oip: adds OIP "
                        "gRPC (stock kservev2 envelope); v1: stock kserve envelope")
    p.add_argument("--max-image-bytes", type=int, default=ModelServingSettings.max_image_bytes)
    p.add_argument("--max-image-pixels", type=int, default=ModelServingSettings.max_image_pixels)
    return p


def served_name(args: argparse.Namespace) -> str | None:
    """--model-name, else the default model's name, or the registered model's (None: the registry's)."""
    return args.model_name or (None if args.from_registry else DEFAULT_MODEL)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    settings = ModelServingSettings(policy=POLICIES.get(args.policy), workers=args.workers,
                                    batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay_ms,
                                    torch_threads=args.torch_threads,
                                    channels_last=None if args.channels_last is None else args.channels_last == "true",
                                    max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels)
    common = dict(topk=args.topk, model_settings=settings, protocol=args.protocol, fmt=args.format,
                  data_dir=args.data_dir)
    try:
        if args.from_registry:
            mar, config = archive_registered(args.from_registry, args.registry_uri or tracking.default_uri(), args.out,
                                             served_name(args), args.version, **common)
        else:
            mar, config = archive(args.checkpoint, args.out, served_name(args), args.version or DEFAULT_VERSION, **common)
    except (ArchiveError, export.ExportError, registry.RegistryError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"archive: error: {e}", file=sys.stderr)
        return 2
    print(f"archive: {mar} ({mar.stat().st_size / 1024:.0f} KiB)\nconfig:  {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
