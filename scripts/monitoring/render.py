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

from scripts.monitoring import dashboard  # noqa: E402
from scripts.monitoring.prometheus import Prometheus  # noqa: E402


def legend(template: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def render(prom: Prometheus, out: Path, start: float, end: float, step: float = 1.0) -> dict[str, int]:
    """Writes the PNG; returns the number of series drawn per panel."""
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
        for q in spec.queries:
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
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        drawn[spec.title] = count
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{dashboard.TITLE}: live data from {prom.url}", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return drawn
