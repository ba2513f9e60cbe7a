"""Transport-agnostic image classifier: bytes in, top-k out. Every runtime (TorchServe handler,
KServe-native server, in-process benchmarks) wraps this class; it never sees HTTP."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Sequence

import torch

from handlers.errors import InputError
from handlers.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from handlers.metrics import Observation, Stopwatch
from handlers.preprocess import bytes_to_tensor
from handlers.spec import WEIGHTS_FILE, ModelSpec

Result = dict | InputError  # per request: {label: probability} (best first) or the error


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


class ImageClassifier:
    def __init__(self, net: torch.nn.Module, spec: ModelSpec, device: str | torch.device = "cpu",
                 max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec = spec
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu", **limits) -> "ImageClassifier":
        """Load from a directory holding model_spec.json, weights.pt and the network's file
        (an unpacked `.mar` or the archive step's staging directory)."""
        model_dir = Path(model_dir)
        spec = ModelSpec.load(model_dir)
        module = import_module_file(model_dir / f"{spec.arch.module}.py")
        net = getattr(module, spec.arch.cls)(**spec.arch.kwargs)
        state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        limits = {"max_bytes": spec.max_bytes, "max_pixels": spec.max_pixels, **limits}
        return cls(net, spec, device, **limits)

    def preprocess(self, data: bytes | bytearray) -> torch.Tensor:
        return bytes_to_tensor(data, self.spec.preprocess, self.max_bytes, self.max_pixels)

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalized [N, C, H, W] → class probabilities [N, num_classes]."""
        return torch.softmax(self.net(batch.to(self.device)).float(), dim=1).cpu()

    def postprocess(self, probs: torch.Tensor, topk: int | None = None) -> list[dict]:
        k = min(topk or self.spec.topk, len(self.spec.labels))
        values, indices = probs.topk(k, dim=1)
        return [{self.spec.labels[i]: round(float(p), 6) for p, i in zip(vs, ix)}
                for vs, ix in zip(values.tolist(), indices.tolist())]

    def predict(self, payloads: Sequence[bytes | bytearray | InputError],
                topk: int | None | Sequence[int | None] = None,
                obs: Observation | None = None) -> list[Result]:
        """One result per payload, in order, in one forward pass. A bad payload (or an InputError
        a transport already raised while decoding the request) becomes that slot's error; the
        others still run. `topk` is one k for all, or one per payload (None: the spec's default).
        `obs`, when given, receives stage timings, the batch size, top-1 labels and rejections."""
        ks = list(topk) if isinstance(topk, (list, tuple)) else [topk] * len(payloads)
        results: list[Result | None] = [None] * len(payloads)
        good, tensors = [], []
        with Stopwatch(obs, "preprocess"):
            for i, payload in enumerate(payloads):
                try:
                    if isinstance(payload, InputError):
                        raise payload
                    tensors.append(self.preprocess(payload))
                    good.append(i)
                except InputError as e:
                    results[i] = e
        if tensors:
            with Stopwatch(obs, "inference"):
                probs = self.infer(torch.stack(tensors))
            with Stopwatch(obs, "postprocess"):
                for row, i in enumerate(good):
                    results[i] = self.postprocess(probs[row:row + 1], ks[i])[0]
        if obs is not None:
            obs.batch_size += len(tensors)
            for r in results:
                if isinstance(r, InputError):
                    obs.rejected[r.reason] += 1
                else:
                    obs.predicted[next(iter(r))] += 1
        return results  # type: ignore[return-value]
