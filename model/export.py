"""Export a checkpoint's network as TorchScript or ONNX, with its preprocessing spec and labels
beside it, and check the export against the eager network on images before writing anything.

    python -m model.export --checkpoint runs/fashion-mnist/model.pt --format onnx --out build/export
    python -m model.export --checkpoint runs/fashion-mnist/model.pt --format onnx-int8 --data-dir data --out build/export

Writes <out>/model.onnx (or model.torchscript.pt, model.int8.onnx) and <out>/export.json: the
format, the architecture, the labels, the preprocessing spec, the largest probability difference
from the eager network on the checked images, with `--data-dir` the top-1 accuracy of both on the
checkpoint's labelled test images, and the torch and exporter versions. `onnx-int8` is the ONNX
export quantized to int8 (model/quantize.py), with the images it was calibrated on. `scripts.serve.archive
--format` packages the same export into a `.mar` that both runtimes serve.

The network alone is exported (normalized float images [N, C, H, W] → logits, any N): decoding,
resizing and normalization stay in handlers/preprocess.py, the one source of preprocessing for
every format.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from handlers import networks
from handlers.accel import InferenceOptions
from handlers.preprocess import PreprocessSpec
from handlers.spec import NETWORK_FILES
from model import checkpoint, quantize

log = logging.getLogger("export")
for _chatty in ("onnxscript", "onnx_ir"):  # the ONNX exporter's passes log every step at INFO
    logging.getLogger(_chatty).setLevel(logging.WARNING)
FORMATS = ("torchscript", "onnx", "onnx-int8")
EXACT_FORMATS = ("torchscript", "onnx")  # fp32: the eager network's answers, to PARITY_TOLERANCE
OPSET = 18
PARITY_TOLERANCE = 1e-4  # largest probability difference from the eager network (fp32)
# int8 rounds every activation: top-1 may change where two classes are close, so the check is
# the size of the change (measured here: at most 0.07 on real photos, EfficientNet-Lite0 and
# ResNet-50) and, on labelled images, the accuracy lost
INT8_TOLERANCE = 0.2
INT8_MAX_ACCURACY_DROP = 0.01


class ExportError(RuntimeError):
    """The network does not export to the format, or the export does not compute what it does."""


def example_input(spec: PreprocessSpec, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, spec.channels, spec.height, spec.width, generator=torch.Generator().manual_seed(0))


def export_network(net: torch.nn.Module, spec: PreprocessSpec, fmt: str, path: Path,
                   calibration: torch.Tensor | None = None) -> Path:
    """Write `net` (eval mode, CPU) in `fmt` to `path`, with a dynamic batch dimension; int8 is
    calibrated on `calibration` (normalized images)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "onnx-int8":
        if calibration is None:
            raise ExportError("onnx-int8 needs calibration images")
        with tempfile.TemporaryDirectory(prefix="export-int8-") as tmp:
            fp32 = export_network(net, spec, "onnx", Path(tmp) / "fp32.onnx")
            try:
                return quantize.quantize(fp32, path, calibration)
            except quantize.QuantizeError as e:
                raise ExportError(str(e)) from e
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
                 tolerance: float | None = None) -> dict:
    """The export's answers against the eager network's: fp32 formats agree on every top-1 within
    PARITY_TOLERANCE; int8 stays within INT8_TOLERANCE."""
    exact = fmt in EXACT_FORMATS
    tolerance = tolerance if tolerance is not None else PARITY_TOLERANCE if exact else INT8_TOLERANCE
    result = parity(net, load_exported(path, fmt), images)
    if (exact and result["top1_agree"] != result["images"]) or result["max_abs_diff"] > tolerance:
        raise ExportError(f"the {fmt} export differs from the eager network: {result} "
                          f"(tolerance {tolerance})")
    return result


def check_accuracy(net: torch.nn.Module, path: Path, fmt: str, labelled: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Top-1 accuracy of the eager network and of the export on labelled images; an int8 export
    that loses more than INT8_MAX_ACCURACY_DROP is refused."""
    images, labels = labelled
    eager = top1_accuracy(net.eval(), images, labels)
    exported = top1_accuracy(load_exported(path, fmt), images, labels)
    result = {"images": len(images), "eager": round(eager, 4), "exported": round(exported, 4),
              "change_pp": round(100 * (exported - eager), 2)}
    if fmt not in EXACT_FORMATS and eager - exported > INT8_MAX_ACCURACY_DROP:
        raise ExportError(f"the {fmt} export loses {eager - exported:.1%} top-1 accuracy on {len(images)} labelled "
                          f"images (at most {INT8_MAX_ACCURACY_DROP:.0%}): {result}")
    return result


def export_checkpoint(ckpt: dict, fmt: str, out: Path, images: torch.Tensor | None = None,
                      data_dir: Path | None = None,
                      labelled: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[Path, dict]:
    """Export, check, and describe: returns the network file and export.json's content. int8
    calibrates on the checkpoint's training images from `data_dir` (else real photos) and is
    checked on its test images from there (all of them, unless `labelled` gives others);
    `labelled` test images add the accuracy of both."""
    net = checkpoint.build_net(ckpt)
    spec = checkpoint.preprocess_spec(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    calibration, calibrated_on = (quantize.calibration_images(ckpt, spec, data_dir) if fmt == "onnx-int8"
                                  else (None, None))
    path = export_network(net, spec, fmt, out / NETWORK_FILES[fmt], calibration)
    if images is None:
        # random inputs check an fp32 export anywhere; int8 is calibrated for real images only
        images = example_input(spec, 4) if fmt in EXACT_FORMATS else real_check_images(ckpt, spec, data_dir)
    checked = check_parity(net, path, fmt, images)
    if labelled is None and fmt not in EXACT_FORMATS:
        # int8's accuracy gate wherever the checkpoint's labelled test images are (the archive too)
        labelled = quantize.own_images(ckpt, spec, data_dir, train=False)
    info = {"format": fmt, "file": path.name, "arch": ckpt["arch"], "labels": list(ckpt["labels"]),
            "preprocess": spec.to_dict(), "parity": checked, "torch": torch.__version__,
            **({"opset": OPSET} if fmt != "torchscript" else {}),
            **({"calibration": calibrated_on} if calibrated_on else {}),
            **({"accuracy": check_accuracy(net, path, fmt, labelled)} if labelled else {})}
    return path, info


def dataset_test_images(ckpt: dict, data_dir: Path, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` (default: all) test images of the checkpoint's own dataset, normalized as served, and
    their labels."""
    found = quantize.own_images(ckpt, checkpoint.preprocess_spec(ckpt), data_dir, train=False, n=n)
    if found is None:
        raise ExportError(f"--data-dir: no test images of the checkpoint's dataset "
                          f"({ckpt['args'].get('dataset')!r}) in {data_dir}")
    return found


def real_check_images(ckpt: dict, spec: PreprocessSpec, data_dir: Path | None, n: int = 64) -> torch.Tensor:
    """The checkpoint's own test images when they are here, else real photos."""
    own = quantize.own_images(ckpt, spec, data_dir, train=False, n=n)
    return own[0] if own is not None else quantize.photos(spec)


@torch.inference_mode()
def top1_accuracy(net, images: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    """Share of `images` whose top-1 class is their label (a torch network or an ONNX session)."""
    right = sum(int((net(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                for i in range(0, len(images), batch))
    return right / len(images)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, help="directory for the network file and export.json")
    p.add_argument("--data-dir", type=Path, help="check parity and accuracy on the checkpoint's test images from "
                                                 "here, and calibrate int8 on its training images (default: "
                                                 "random inputs, no accuracy, real photos)")
    p.add_argument("--check-images", type=int, default=64, help="test images the parity check uses")
    p.add_argument("--accuracy-images", type=int, default=None,
                   help="labelled test images the accuracy check uses (default: all)")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        ckpt = checkpoint.load(args.checkpoint)
        checked, labelled = None, None
        if args.data_dir:
            checked = dataset_test_images(ckpt, args.data_dir, args.check_images)[0]
            labelled = dataset_test_images(ckpt, args.data_dir, args.accuracy_images)
        path, info = export_checkpoint(ckpt, args.format, args.out, checked, args.data_dir, labelled)
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    (args.out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    p = info["parity"]
    print(f"export: {path} ({path.stat().st_size / 1024:.0f} KiB); parity on {p['images']} images: "
          f"top-1 {p['top1_agree']}/{p['images']}, max probability difference {p['max_abs_diff']:.1e}")
    if "calibration" in info:
        print(f"export: int8 calibrated on {info['calibration']}")
    if "accuracy" in info:
        a = info["accuracy"]
        print(f"export: top-1 accuracy on {a['images']} labelled test images: eager {a['eager']:.2%}, "
              f"{args.format} {a['exported']:.2%} ({a['change_pp']:+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
