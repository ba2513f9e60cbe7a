"""The network inside an archive, in the format model_spec.json names: eager PyTorch (the state
dict + the network's own file), TorchScript, or ONNX run by ONNX Runtime. Every format comes out
as a callable from normalized float images [N, C, H, W] to logits [N, classes], so the classifier
around it (decoding, batching, metrics, errors) is the same for all three."""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import torch

from handlers.accel import AccelError, ResolvedOptions
from handlers.spec import ONNX_FORMATS, ModelSpec


def import_module_file(path: Path):
    """Import a network's file shipped at the archive's top level, without touching sys.path."""
    name = f"_archived_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import network file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class OnnxNetwork:
    """An ONNX Runtime session with the call signature of a torch network. ONNX Runtime chooses its
    own memory layout and kernels; it runs on the CPU (the onnxruntime wheel here has no GPU
    provider: a GPU archive stays eager), fp32 in and out, an int8 network's quantization inside."""

    def __init__(self, path: Path, options: ResolvedOptions):
        if options.device.type != "cpu" or options.dtype != torch.float32 or options.compile:
            raise AccelError(f"an ONNX archive runs fp32 on the CPU without torch.compile; got "
                             f"{options.describe()} (serve the eager or TorchScript archive there)")
        import onnxruntime as ort  # only ONNX archives need it

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.torch_threads or 0  # 0: ONNX Runtime's default, one per core
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]
        return torch.from_numpy(logits)


def load_torchscript(path: Path) -> torch.nn.Module:
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def load_network(model_dir: Path, spec: ModelSpec, options: ResolvedOptions) -> torch.nn.Module | OnnxNetwork:
    """The archive's network on the CPU (the classifier moves a torch network where it runs)."""
    path = Path(model_dir) / spec.network_file
    if spec.format in ONNX_FORMATS:
        return OnnxNetwork(path, options)
    if spec.format == "torchscript":
        if options.compile:
            raise AccelError("torch.compile does not take a TorchScript archive (serve the eager archive)")
        return load_torchscript(path)
    module = import_module_file(Path(model_dir) / f"{spec.arch.module}.py")
    net = getattr(module, spec.arch.cls)(**spec.arch.kwargs)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()
