"""Where and how the model runs: device, precision, memory format, where images are decoded, and
torch.compile. Typed, defaulted, read from the environment (the same SERVE_* names in every
runtime: TorchServe's worker inherits its container's environment). "auto" means: the GPU path
when a GPU is present (JPEG decoded on the GPU, fp16, channels_last), the CPU path otherwise.

  SERVE_DEVICE           auto | cpu | cuda | cuda:N
  SERVE_PRECISION        auto | fp32 | fp16 | bf16        (auto: fp16 on a GPU, fp32 on the CPU)
  SERVE_CHANNELS_LAST    auto | true | false               (auto: on a GPU, else the policy's)
  SERVE_TENSOR_DECODE    auto | true | false               (auto: on a GPU; torchvision.io decodes
                         complete 8-bit RGB/gray JPEG and PNG, on the GPU for JPEG; other images
                         take the PIL path)
  SERVE_COMPILE          false | true                      (torch.compile the network at load)
  SERVE_TORCH_THREADS    CPU threads per forward pass

On the CPU, channels_last and the threads default to the model's serving policy (model_spec.json,
chosen by the archive step from the model's cost: scripts/serve/policy.py). A small model runs one
thread per pass: a server runs several requests (and its own frontend) at once, and torch's OpenMP
threads spin while they wait for each other (on the 2-core machine here a small CNN's pass cost
40 ms of CPU with 2 threads and 1.25 ms with 1, measured in-process with other work running). A
large model runs one pass at a time on every CPU the container may use (`usable_cpus`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from handlers.settings import ENV_PREFIX, SettingsError, from_env
from handlers.spec import ServingPolicy

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class AccelError(SettingsError):
    """A setting that cannot work here, named with its variable."""


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota (a pod's CPU
    limit). torch's own default is the node's cores, which in a pod limited to 2 CPUs of a 64-core
    node starts 64 threads that the quota then throttles."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file here, or a format it does not have
        pass
    return cpus


@dataclass(frozen=True)
class InferenceOptions:
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None  # None: auto
    tensor_decode: bool | None = None  # None: auto
    compile: bool = False
    torch_threads: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "InferenceOptions":
        return from_env(cls, env)

    def resolve(self, policy: ServingPolicy | None = None) -> "ResolvedOptions":
        """Concrete choices for this machine, the model's serving `policy` filling what is unset on
        the CPU; an explicit request that cannot work is an error (a GPU asked for where there is
        none), never a silent downgrade."""
        policy = policy or ServingPolicy()
        device_name, precision = self.device.strip().lower(), self.precision.strip().lower()
        if device_name == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            try:
                device = torch.device(device_name)
            except RuntimeError:
                raise AccelError(f"{ENV_PREFIX}DEVICE: not a device: {self.device!r} (auto, cpu, cuda, cuda:N)") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise AccelError(f"{ENV_PREFIX}DEVICE={self.device} but torch sees no CUDA GPU here "
                                 f"(use auto or cpu)")
            if device.type not in ("cpu", "cuda"):
                raise AccelError(f"{ENV_PREFIX}DEVICE: only cpu and cuda are supported, got {self.device!r}")
        gpu = device.type == "cuda"
        precision = precision if precision != "auto" else ("fp16" if gpu else "fp32")
        if precision not in PRECISIONS:
            raise AccelError(f"{ENV_PREFIX}PRECISION must be auto, {', '.join(PRECISIONS)}; got {self.precision!r}")
        return ResolvedOptions(
            device=device, dtype=PRECISIONS[precision],
            channels_last=(gpu or policy.channels_last) if self.channels_last is None else self.channels_last,
            tensor_decode=gpu if self.tensor_decode is None else self.tensor_decode,
            compile=self.compile,
            torch_threads=self.torch_threads or (None if gpu else policy.torch_threads or usable_cpus()))


@dataclass(frozen=True)
class ResolvedOptions:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    tensor_decode: bool
    compile: bool
    torch_threads: int | None

    def describe(self) -> str:
        return (f"{self.device}, {str(self.dtype).removeprefix('torch.')}, "
                f"{'channels_last' if self.channels_last else 'contiguous'}, "
                f"{'tensor' if self.tensor_decode else 'PIL'} decode{', compiled' if self.compile else ''}"
                f"{f', {self.torch_threads} CPU threads' if self.torch_threads else ''}")
