"""Bounds and targets of every scenario."""
from __future__ import annotations

from dataclasses import dataclass

from scripts.harness.reliability.servers import RUNTIMES
from scripts.serve.settings import DEFAULT_MODEL


@dataclass(frozen=True)
class ReliabilitySettings:
    """Bounds and targets of every scenario (defaults: the full suite; `quick()`: the fast subset)."""

    model: str = DEFAULT_MODEL
    runtimes: tuple[str, ...] = RUNTIMES  # each scenario runs on each, in this order
    job_queue_size: int = 32  # ≥ load concurrency (no 503 under held load), ≪ overload burst
    # KServe-native: requests in the server at once; above the 16 clients of held load and the bad
    # inputs' mixed phase, below the queue: at 32 a burst of 120 once passed without a 503
    kserve_max_inflight: int = 24
    request_timeout_s: float = 60.0  # > worker restart time: queued requests wait for the new worker
    match_tolerance: float = 1e-4  # batched vs single forward passes differ by float noise
    # held load
    load_concurrency: int = 16
    load_seconds: float = 60.0
    load_max_requests: int = 50_000
    # overload
    burst: int = 200
    fast_503_p95_s: float = 1.0
    recover_within_s: float = 10.0
    # worker fault
    fault_concurrency: int = 16
    fault_kill_after_s: float = 5.0
    fault_seconds: float = 30.0
    fault_recovery_target_s: float = 15.0
    # rollout
    rollout_concurrency: int = 8
    rollout_max_s: float = 180.0
    rollout_naive: bool = True  # also measure the naive procedure (informational)

    @classmethod
    def quick(cls) -> "ReliabilitySettings":
        return cls(load_concurrency=8, load_seconds=5.0, burst=120, fault_concurrency=8,
                   fault_kill_after_s=1.5, fault_seconds=12.0, rollout_naive=False)
