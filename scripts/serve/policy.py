"""Which serving policy a model gets (handlers/spec.py's ServingPolicy), chosen at archive time
from the cost of one forward pass, counted in floating-point operations: a count, not a timing,
so the same checkpoint always gets the same policy, whatever machine archives it.

  light (under HEAVY_FLOPS; the default CNN: 4 MFLOPs): requests batched (up to 8, whatever has
      queued: no wait for a batch to fill), one pass at a time on one thread, contiguous memory; on
      TorchServe two worker processes. The pass takes well under a millisecond, so the per-request
      work around it (HTTP, the hop to a worker) is what batching shares, and in the KServe-native
      runtime a second thread only spins. TorchServe's frontend hands each batch to a worker
      process over a socket: with one worker the worker idles during that hop, and a batch delay
      makes a lone client wait for a batch that never fills. Measured on the 2-core machine here
      (docs/bench/bench.md; 5 interleaved rounds, medians, against the FastAPI baseline): batch 8
      with a 5 ms delay and one worker served a lone client at 0.19-0.21x the baseline and 8
      clients at 1.42x; no delay and two workers 0.63x and 1.75x; no delay and one worker 0.78x
      but 1.11x; 1 ms and one worker 0.42-0.43x and 1.33-1.35x.
  heavy (EfficientNet-Lite0: 0.77 GFLOPs; ResNet-50: 8.2 GFLOPs): one image per pass, one pass at a
      time on every CPU the container may use (threads 0 = its CPU limit), channels_last. The pass
      is all compute. Measured on the 2-core machine here (docs/bench/bench-imagenet.md): batching
      slowed EfficientNet-Lite0 (batch 8 ran at 0.6 to 0.9 times the images/s of batch 1),
      channels_last sped it up by 1.1 to 1.4 times, and one two-thread pass at a time served a
      lone client 1.6 times faster than two one-thread passes side by side, with the same
      throughput under 8 clients.
  parallel (an ONNX or int8 archive of a heavy model under PARALLEL_BELOW_FLOPS: EfficientNet-Lite0):
      one single-thread pass per CPU side by side (workers 2: the chart's CPU limit), each over up
      to 8 queued images. ONNX Runtime makes the pass so short (6.5 ms for EfficientNet-Lite0 on two
      threads) that decoding and HTTP around it leave one two-thread pass idle; two single-thread
      passes overlap them. Measured on the 2-core machine here (KServe-native REST, 3 interleaved
      rounds, medians): EfficientNet-Lite0 at 8 clients 114 req/s against 93 for one two-thread
      pass, a lone client 58 against 90; two two-thread passes: 96 and 90 (the threads contend).
  batched (an ONNX or int8 archive of a heavier model: ResNet-50): one pass at a time on every CPU,
      over up to 8 queued images. ResNet-50 in two one-thread passes gained 6% at 8 clients and
      lost half alone, so it keeps one pass.
  ONNX Runtime, unlike eager PyTorch here, gains from batching, and whatever has queued is taken
  (no wait), so a lone client is served alone as before. A/B on the 2-core machine here (2026-12-01,
  3 interleaved rounds of 4 s, medians, req/s at 8 clients, one image per pass → up to 8; a lone
  client unchanged within the rounds' spread): ResNet-50 ONNX KServe-native 21.2 → 22.2, TorchServe
  20.2 → 21.5; int8 53.2 → 64.2 and 52.0 → 59.2; EfficientNet-Lite0 ONNX 125.5 → 133.0 and
  125.8 → 140.0; int8 175.2 → 223.5 and 194.0 → 250.0.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from handlers.preprocess import PreprocessSpec
from handlers.spec import ONNX_FORMATS, ServingPolicy

# A pass of 100 MFLOPs takes a few milliseconds on one core of these CPUs: above it the server's
# own per-request work is small beside the pass.
HEAVY_FLOPS = 100e6
LIGHT = ServingPolicy(workers=1, batch_size=8, max_batch_delay_ms=0, torch_threads=1, channels_last=False,
                      torchserve_workers=2)
HEAVY = ServingPolicy(workers=1, batch_size=1, max_batch_delay_ms=0, torch_threads=0, channels_last=True)
PARALLEL_BELOW_FLOPS = 2e9
ONNX_BATCH = 8
PARALLEL = ServingPolicy(workers=2, batch_size=ONNX_BATCH, max_batch_delay_ms=0, torch_threads=1, channels_last=False)
BATCHED = ServingPolicy(workers=1, batch_size=ONNX_BATCH, max_batch_delay_ms=0, torch_threads=0, channels_last=False)


def forward_flops(net: torch.nn.Module, spec: PreprocessSpec) -> int:
    """Floating-point operations of one image's forward pass (torch's own counter)."""
    x = torch.zeros(1, spec.channels, spec.height, spec.width)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net.eval()(x)
    return int(counter.get_total_flops())


def choose(net: torch.nn.Module, spec: PreprocessSpec, fmt: str = "eager") -> tuple[ServingPolicy, str]:
    """The policy for this network in this archive format, and a line saying why."""
    flops = forward_flops(net, spec)
    heavy = flops >= HEAVY_FLOPS
    why = (f"{'heavy' if heavy else 'light'} model: {flops / 1e6:,.0f} MFLOPs per image "
           f"({'≥' if heavy else '<'} {HEAVY_FLOPS / 1e6:.0f})")
    if heavy and fmt in ONNX_FORMATS:
        if flops < PARALLEL_BELOW_FLOPS:
            return PARALLEL, why + (f"; ONNX under {PARALLEL_BELOW_FLOPS / 1e9:.0f} GFLOPs: single-thread passes "
                                    f"side by side, up to {ONNX_BATCH} queued images each")
        return BATCHED, why + f"; ONNX: one pass on every CPU, up to {ONNX_BATCH} queued images"
    return (HEAVY if heavy else LIGHT), why
