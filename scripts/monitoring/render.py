"""Renders the dashboard's panels from a live Prometheus to one PNG with matplotlib (no Grafana
server can run here): the same PromQL as dashboard.json, variables set to "all"."""
from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scripts.monitoring import dashboard  # noqa: E402
from scripts.monitoring.prometheus import Prometheus  # noqa: E402


def legend(template: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def heatmap(ax, series: list[dict]) -> int:
    """Cumulative bucket rates by `le` (one series each) drawn as requests/s per bucket over time,
    on a log latency axis; the rows outside the observed range are left out. Returns the buckets drawn."""
    finite = sorted((float(s["metric"]["le"]), s) for s in series if s["metric"].get("le") not in (None, "+Inf"))
    if not finite:
        return 0
    times = sorted({float(t) for _, s in finite for t, _ in s["values"]})
    at = {t: i for i, t in enumerate(times)}
    cumulative = np.zeros((len(finite), len(times)))
    for row, (_, s) in enumerate(finite):
        for t, v in s["values"]:
            cumulative[row, at[float(t)]] = float(v)
    per_bucket = np.diff(cumulative, axis=0, prepend=0.0).clip(min=0)
    used = np.flatnonzero(per_bucket.sum(axis=1) > 0)
    if not used.size:
        return 0
    rows = slice(max(used[0] - 1, 0), min(used[-1] + 2, len(finite)))
    edges = [le for le, _ in finite]
    lower = [edges[0] / 1.6] + edges[:-1]
    centers = [math.sqrt(lo * hi) for lo, hi in zip(lower, edges)][rows]
    ax.pcolormesh([datetime.fromtimestamp(t) for t in times], centers, per_bucket[rows], shading="nearest", cmap="viridis")
    ax.set_yscale("log")
    return len(centers)


def render(prom: Prometheus, out: Path, start: float, end: float, step: float = 1.0, note: str = "") -> dict[str, int]:
    """Writes the PNG (with `note` under the title); returns the number of series drawn per panel."""
    # Prometheus evaluates at start + k·step: start is moved back so that `end` itself is a step
    # and the newest samples are drawn.
    start = end - math.ceil((end - start) / step) * step
    panels = dashboard.PANELS
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    drawn = {}
    for ax, spec in zip(axes.flat, panels):
        count = 0
        if spec.heatmap:
            count = heatmap(ax, prom.query_range(dashboard.prometheus_query(spec.queries[0].expr), start, end, step))
        for q in () if spec.heatmap else spec.queries:
            for s in prom.query_range(dashboard.prometheus_query(q.expr), start, end, step):
                xs = [datetime.fromtimestamp(float(t)) for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                ax.plot(xs, ys, label=legend(q.legend, s["metric"])[:40])
                count += 1
        ax.set_title(spec.title, fontsize=10)
        ax.set_ylabel(spec.unit)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        if count:
            if not spec.heatmap:
                ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        drawn[spec.title] = count
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{dashboard.TITLE}: live data from {prom.url}" + (f"\n{note}" if note else ""), fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if note else 0.985))  # room for the title lines
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return drawn
