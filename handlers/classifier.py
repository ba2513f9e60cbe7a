"""Transport-agnostic image classifier: bytes in, top-k out. Every runtime (TorchServe handler,
KServe-native server, in-process benchmarks) wraps this class; it never sees HTTP."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import torch

from handlers.accel import InferenceOptions, ResolvedOptions
from handlers.errors import InputError, InvalidImage
from handlers.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from handlers.metrics import Observation, Stopwatch
from handlers.preprocess import (decode_tensors, image_to_uint8, load_image, normalize, open_image,
                                 resize_tensor, tensor_decodable)
from handlers.networks import OnnxNetwork, load_network
from handlers.spec import ModelSpec

log = logging.getLogger(__name__)

Result = dict | InputError  # per request: {label: probability} (best first) or the error


def undecodable(e: Exception) -> InvalidImage:
    """A decoder raising outside its documented errors (Pillow's DDS reader raises
    NotImplementedError for a corrupt header, for one): the bytes did it, so it is that image's
    400, and the batch's other images still get their answers."""
    log.warning("image decoder raised %s: %s", type(e).__name__, e)
    return InvalidImage(f"image could not be decoded ({type(e).__name__}: {e})")


class ImageClassifier:
    def __init__(self, net: torch.nn.Module | OnnxNetwork, spec: ModelSpec, device: str | torch.device | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 options: InferenceOptions | None = None):
        """`net`: a torch network (eager or TorchScript) or an ONNX Runtime session
        (handlers/networks.py). `options` say where and how to run (handlers/accel.py; default:
        from SERVE_* in the environment, "auto" = the GPU path when a GPU is present); `device`,
        when given, wins."""
        self.options: ResolvedOptions = self.resolve(spec, device, options)
        self.spec = spec
        self.device = self.options.device
        if isinstance(net, OnnxNetwork):
            # ONNX Runtime runs the network on its own threads (the policy's count), in its own
            # layout, fed contiguous fp32; torch only normalizes here: one thread, so that no second
            # OpenMP pool in the process throttles an eager model's (scripts/runtime/batching.py)
            torch.set_num_threads(1)
            self.options = dataclasses.replace(self.options, channels_last=False)
            self.net = self.forward = net
        else:
            if self.options.torch_threads:
                torch.set_num_threads(self.options.torch_threads)
            memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
            self.net = net.to(self.device, dtype=self.options.dtype, memory_format=memory_format).eval()
            self.forward = torch.compile(self.net) if self.options.compile else self.net
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    @staticmethod
    def resolve(spec: ModelSpec, device: str | torch.device | None, options: InferenceOptions | None) -> ResolvedOptions:
        options = options or InferenceOptions.from_env()
        if device is not None:
            options = dataclasses.replace(options, device=str(device))
        return options.resolve(spec.serving)

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device | None = None,
             options: InferenceOptions | None = None, **limits) -> "ImageClassifier":
        """Load from a directory holding model_spec.json and the network in the spec's format
        (an unpacked `.mar` or the archive step's staging directory)."""
        spec = ModelSpec.load(Path(model_dir))
        net = load_network(Path(model_dir), spec, cls.resolve(spec, device, options))
        limits = {"max_bytes": spec.max_bytes, "max_pixels": spec.max_pixels, **limits}
        return cls(net, spec, device, options=options, **limits)

    def preprocess(self, data: bytes | bytearray) -> torch.Tensor:
        """One image → normalized float32 [C, H, W] (raises its InputError)."""
        item = self.decode([data])[0][0]
        if isinstance(item, InputError):
            raise item
        return normalize(item, self.spec.preprocess)

    def decode(self, payloads: Sequence[bytes | bytearray | InputError]) -> tuple[list, list[int]]:
        """Payloads → uint8 [C, H, W] tensors in the spec's mode and size (or each slot's
        InputError), and the indices that decoded. The tensor path (options.tensor_decode) takes
        what torchvision.io decodes as PIL would, on the model's device; the rest goes the PIL path."""
        spec = self.spec.preprocess
        out: list = [None] * len(payloads)
        fast: list[int] = []
        for i, payload in enumerate(payloads):
            try:
                if isinstance(payload, InputError):
                    raise payload
                img = open_image(payload, self.max_bytes, self.max_pixels)
                if self.options.tensor_decode and tensor_decodable(img, payload):
                    out[i] = img.format
                    fast.append(i)
                else:
                    out[i] = image_to_uint8(load_image(img), spec)
            except InputError as e:
                out[i] = e
            except Exception as e:  # noqa: BLE001 - see undecodable()
                out[i] = undecodable(e)
        if fast:
            try:
                decoded = decode_tensors([(out[i], payloads[i]) for i in fast], spec, self.device)
                for i, t in zip(fast, decoded):
                    out[i] = resize_tensor(t, spec)
            except Exception:  # noqa: BLE001 - one corrupt image in the batch: decode them one by one
                for i in fast:
                    try:
                        out[i] = resize_tensor(decode_tensors([(out[i], payloads[i])], spec, self.device)[0], spec)
                    except InputError as e:
                        out[i] = e
                    except Exception as e:  # noqa: BLE001
                        out[i] = undecodable(e)
        good = [i for i, t in enumerate(out) if isinstance(t, torch.Tensor)]
        return out, good

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalized [N, C, H, W] → class probabilities [N, num_classes] (float32, CPU)."""
        memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        x = batch.to(self.device, dtype=self.options.dtype, non_blocking=True).contiguous(memory_format=memory_format)
        return torch.softmax(self.forward(x).float(), dim=1).cpu()

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
        with Stopwatch(obs, "preprocess"):
            decoded, good = self.decode(payloads)
            for i, item in enumerate(decoded):
                if isinstance(item, InputError):
                    results[i] = item
            if good:
                batch = normalize(torch.stack([decoded[i].to(self.device) for i in good]), self.spec.preprocess)
        if good:
            with Stopwatch(obs, "inference"):
                probs = self.infer(batch)
            with Stopwatch(obs, "postprocess"):
                for row, i in enumerate(good):
                    results[i] = self.postprocess(probs[row:row + 1], ks[i])[0]
        if obs is not None:
            obs.batch_size += len(good)
            for r in results:
                if isinstance(r, InputError):
                    obs.rejected[r.reason] += 1
                else:
                    obs.predicted[next(iter(r))] += 1
        return results  # type: ignore[return-value]
