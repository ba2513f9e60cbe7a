"""The one quantile rule of every load tool here (bench, reliability, monitoring): nearest rank,
the smallest observation with at least a share q of all observations at or below it. It is an
observed value, never an interpolation, so p99 of 100 requests is the 99th fastest."""
from __future__ import annotations

import math
from typing import Iterable


def quantile(values: Iterable[float], q: float) -> float:
    """Nearest-rank quantile of `values` (NaN when there are none); q in [0, 1]."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} outside [0, 1]")
    xs = sorted(values)
    if not xs:
        return float("nan")
    rank = math.ceil(q * len(xs) - 1e-9)  # 1-based; the epsilon absorbs 0.95 * 100 = 95.000...01
    return xs[min(len(xs), max(1, rank)) - 1]
