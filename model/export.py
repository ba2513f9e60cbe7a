"""Export a checkpoint's network as TorchScript or ONNX, with its preprocessing spec and labels
beside it, and check the export against the eager network on images before writing anything.

    python -m model.export --checkpoint runs/fashion-mnist/model.pt --format onnx --out build/export

Writes <out>/model.onnx (or model.torchscript.pt) and <out>/export.json: the format, the
architecture, the labels, the preprocessing spec, the largest probability difference from the
eager network on the checked images, and the torch and exporter versions. `scripts.serve.archive
--format` packages the same export into a `.mar` that both runtimes serve.

The network alone is exported (normalized float images [N, C, H, W] → logits, any N): decoding,
resizing and normalization stay in handlers/preprocess.py, the one source of preprocessing for
every format.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

from handlers import networks
from handlers.accel import InferenceOptions
from handlers.preprocess import PreprocessSpec, normalize
from handlers.spec import NETWORK_FILES
from model import checkpoint, data, presets

log = logging.getLogger("export")
for _chatty in ("onnxscript", "onnx_ir"):  # the ONNX exporter's passes log every step at INFO
    logging.getLogger(_chatty).setLevel(logging.WARNING)
FORMATS = ("torchscript", "onnx")
OPSET = 18
PARITY_TOLERANCE = 1e-4  # largest probability difference from the eager network (fp32)


class ExportError(RuntimeError):
    """The network does not export to the format, or the export does not compute what it does."""


def example_input(spec: PreprocessSpec, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, spec.channels, spec.height, spec.width, generator=torch.Generator().manual_seed(0))


def export_network(net: torch.nn.Module, spec: PreprocessSpec, fmt: str, path: Path) -> Path:
    """Write `net` (eval mode, CPU, fp32) in `fmt` to `path`, with a dynamic batch dimension."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    net = net.eval().cpu().float()
    x = example_input(spec)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # torch 2.14 marks torch.jit deprecated; TorchScript is still what TorchServe's and
            # most users' tooling loads, so it stays one of the formats
            warnings.simplefilter("ignore", FutureWarning)
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(net, x, check_trace=False), str(path))
            else:
                quiet = io.StringIO()  # the exporter prints its progress to stdout
                with contextlib.redirect_stdout(quiet):
                    torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=OPSET,
                                      input_names=["images"], output_names=["logits"],
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                                      external_data=False)
                strip_source_locations(path)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - any exporter failure is this network's, named as such
        raise ExportError(f"{type(net).__name__} does not export to {fmt}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    return path


def strip_source_locations(path: Path) -> None:
    """torch's exporter stores each node's Python stack trace (absolute paths of this machine's
    files) as metadata: drop it, so that the file tells nothing about where it was built and the
    same checkpoint exports to the same bytes anywhere (the DVC pipeline compares hashes)."""
    import onnx

    model = onnx.load(str(path))
    for graph_nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in graph_nodes:
            del node.metadata_props[:]
    onnx.save(model, str(path))


def load_exported(path: Path, fmt: str):
    """The exported network as the runtimes load it (handlers/networks.py)."""
    if fmt == "torchscript":
        return networks.load_torchscript(path)
    return networks.OnnxNetwork(path, InferenceOptions(device="cpu").resolve())


@torch.inference_mode()
def parity(net: torch.nn.Module, exported, images: torch.Tensor) -> dict:
    """Probabilities of the eager and the exported network on the same normalized images."""
    eager = torch.softmax(net.eval()(images).float(), dim=1)
    other = torch.softmax(exported(images).float(), dim=1)
    return {"images": len(images), "max_abs_diff": float((eager - other).abs().max()),
            "top1_agree": int((eager.argmax(1) == other.argmax(1)).sum())}


def check_parity(net: torch.nn.Module, path: Path, fmt: str, images: torch.Tensor,
                 tolerance: float = PARITY_TOLERANCE) -> dict:
    result = parity(net, load_exported(path, fmt), images)
    if result["top1_agree"] != result["images"] or result["max_abs_diff"] > tolerance:
        raise ExportError(f"the {fmt} export differs from the eager network: {result} "
                          f"(tolerance {tolerance})")
    return result


def export_checkpoint(ckpt: dict, fmt: str, out: Path, images: torch.Tensor | None = None) -> tuple[Path, dict]:
    """Export, check, and describe: returns the network file and export.json's content."""
    net = checkpoint.build_net(ckpt)
    spec = checkpoint.preprocess_spec(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    path = export_network(net, spec, fmt, out / NETWORK_FILES[fmt])
    checked = check_parity(net, path, fmt, example_input(spec, 4) if images is None else images)
    info = {"format": fmt, "file": path.name, "arch": ckpt["arch"], "labels": list(ckpt["labels"]),
            "preprocess": spec.to_dict(), "parity": checked, "torch": torch.__version__,
            **({"opset": OPSET} if fmt == "onnx" else {})}
    return path, info


def dataset_images(ckpt: dict, data_dir: Path | None, n: int) -> torch.Tensor | None:
    """The first `n` test images of the checkpoint's own dataset, normalized as served."""
    if data_dir is None:
        return None
    dataset = ckpt["args"].get("dataset")
    if dataset not in data.DATASETS:
        raise ExportError(f"--data-dir: the checkpoint was not trained on a known dataset ({dataset!r})")
    spec = checkpoint.preprocess_spec(ckpt)
    images = itertools.islice(data.pil_images(data.load(dataset, data_dir, train=False)), n)
    return normalize(presets.images_to_uint8(images, spec), spec)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, help="directory for the network file and export.json")
    p.add_argument("--data-dir", type=Path, help="check parity on the checkpoint's test images from here "
                                                 "(default: random inputs)")
    p.add_argument("--check-images", type=int, default=64, help="test images the parity check uses")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        ckpt = checkpoint.load(args.checkpoint)
        path, info = export_checkpoint(ckpt, args.format, args.out, dataset_images(ckpt, args.data_dir, args.check_images))
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    (args.out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    p = info["parity"]
    print(f"export: {path} ({path.stat().st_size / 1024:.0f} KiB); parity on {p['images']} images: "
          f"top-1 {p['top1_agree']}/{p['images']}, max probability difference {p['max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
