"""The model spec: everything a runtime needs besides the weights, written once by the archive
step as `model_spec.json` inside the `.mar` and read by every runtime."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from handlers.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from handlers.preprocess import PreprocessSpec

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "weights.pt"
# How the network travels: eager (the state dict + the network's own file, rebuilt in PyTorch) or
# exported by model/export.py (a graph that needs no Python class). Each format's file in the archive.
NETWORK_FILES = {"eager": WEIGHTS_FILE, "torchscript": "model.torchscript.pt", "onnx": "model.onnx",
                 "onnx-int8": "model.int8.onnx"}
ONNX_FORMATS = ("onnx", "onnx-int8")  # run by ONNX Runtime


@dataclass(frozen=True)
class ArchSpec:
    """Where the network's class lives inside the archive and how to construct it."""

    module: str  # file name without .py, at the archive's top level
    cls: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ServingPolicy:
    """How the model is served on the CPU, chosen for it by the archive step from its cost
    (scripts/serve/policy.py) and read by both runtimes: TorchServe's workers and batching
    (config.properties, derived from this), the KServe-native runtime's batch workers, and the
    handler's threads and memory format (SERVE_TORCH_THREADS and SERVE_CHANNELS_LAST win; a GPU
    uses its own defaults, handlers/accel.py). The defaults are those of a small model, which
    scripts/serve/policy.py's LIGHT serves with a second TorchServe worker."""

    workers: int = 1  # forward passes at once: TorchServe workers, the runtime's batch threads
    batch_size: int = 8  # images per forward pass at most
    max_batch_delay_ms: int = 0  # TorchServe waits this long for a batch; the runtime never waits
    torch_threads: int = 1  # intra-op threads per forward pass; 0: the CPUs the container may use
    channels_last: bool = False
    # TorchServe's worker processes when they differ from `workers` (None: the same). Its frontend
    # hands each batch to a worker process over a socket, and a second process overlaps that hop;
    # the runtime's passes need no hop (a light model's run on its event loop).
    torchserve_workers: int | None = None

    def __post_init__(self):
        if (min(self.workers, self.batch_size, self.torchserve_workers or 1) < 1
                or min(self.torch_threads, self.max_batch_delay_ms) < 0):
            raise ValueError(f"workers, torchserve_workers and batch_size must be >= 1, torch_threads and "
                             f"max_batch_delay_ms >= 0: {self}")

    @property
    def torchserve_worker_count(self) -> int:
        return self.torchserve_workers or self.workers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ServingPolicy":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    arch: ArchSpec
    topk: int = 5
    max_bytes: int = DEFAULT_MAX_BYTES  # per image, after any base64 decoding
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard
    serving: ServingPolicy = field(default_factory=ServingPolicy)
    format: str = "eager"  # a key of NETWORK_FILES
    # where the weights came from, when a registry gave them: registry, name, version, run_id, alias
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.format not in NETWORK_FILES:
            raise ValueError(f"format must be one of {', '.join(NETWORK_FILES)}, got {self.format!r}")
        if not self.labels:
            raise ValueError("labels must not be empty")
        if self.topk < 1:
            raise ValueError("topk must be >= 1")
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError("max_bytes and max_pixels must be >= 1")
        object.__setattr__(self, "labels", tuple(self.labels))

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "labels": list(self.labels),
                "topk": self.topk, "max_bytes": self.max_bytes, "max_pixels": self.max_pixels,
                "preprocess": self.preprocess.to_dict(), "serving": self.serving.to_dict(), "format": self.format,
                **({"source": dict(self.source)} if self.source else {}),
                "arch": {"module": self.arch.module, "class": self.arch.cls,
                         "kwargs": self.arch.kwargs}}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        a = d["arch"]
        return cls(name=d["name"], version=str(d["version"]), labels=tuple(d["labels"]),
                   topk=int(d.get("topk", 5)), max_bytes=int(d.get("max_bytes", DEFAULT_MAX_BYTES)),
                   max_pixels=int(d.get("max_pixels", DEFAULT_MAX_PIXELS)), preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                   serving=ServingPolicy.from_dict(d.get("serving", {})), format=d.get("format", "eager"),
                   source=dict(d.get("source", {})),
                   arch=ArchSpec(module=a["module"], cls=a["class"], kwargs=dict(a.get("kwargs", {}))))

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @property
    def network_file(self) -> str:
        return NETWORK_FILES[self.format]

    @classmethod
    def load(cls, directory: Path) -> "ModelSpec":
        return cls.from_dict(json.loads((Path(directory) / SPEC_FILE).read_text()))
