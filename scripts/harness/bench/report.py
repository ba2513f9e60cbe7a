"""The bench's results: ratios within one run, the CPU targets, a Markdown table and a
PNG plot."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINE = "fastapi-baseline"
BASELINE_1T = "fastapi-1-thread"  # the same app with OMP_NUM_THREADS=1: the stricter comparison
INPROCESS = "in-process"
TARGET_CONCURRENCY = 8
# The CPU targets: (target, minimum throughput ratio to the baseline at concurrency 8)
THROUGHPUT_TARGETS = {"kserve-rest": 1.0, "torchserve-rest": 0.5}
ADDED_P50_TARGET = ("kserve-rest", 2.0)  # ms over the in-process p50, at concurrency 1


def by_key(points: list[dict]) -> dict[tuple[str, int], dict]:
    return {(p["target"], p["concurrency"]): p for p in points}


def add_ratios(points: list[dict]) -> None:
    """Throughput ratio to the baseline at the same concurrency and to the in-process pipeline
    (one request at a time); p50 added over the in-process p50."""
    index = by_key(points)
    inproc = index.get((INPROCESS, 1))
    for p in points:
        for key, name in (("x_baseline", BASELINE), ("x_baseline_1t", BASELINE_1T)):
            base = index.get((name, p["concurrency"]))
            p[key] = round(p["throughput_rps"] / base["throughput_rps"], 3) if base and base["throughput_rps"] else None
        p["x_inprocess"] = round(p["throughput_rps"] / inproc["throughput_rps"], 3) if inproc and inproc["throughput_rps"] else None
        p["p50_added_ms"] = round(p["p50_ms"] - inproc["p50_ms"], 3) if inproc else None


def verdicts(points: list[dict]) -> list[dict]:
    index = by_key(points)
    out = []
    for target, minimum in THROUGHPUT_TARGETS.items():
        p = index.get((target, TARGET_CONCURRENCY))
        for key, what in (("x_baseline", "the baseline"), ("x_baseline_1t", "the 1-thread baseline")):
            got = p and p.get(key)
            out.append({"check": f"{target} throughput ≥ {minimum}× {what} at concurrency {TARGET_CONCURRENCY}",
                        "value": got, "met": got is not None and got >= minimum})
    target, limit = ADDED_P50_TARGET
    p = index.get((target, 1))
    got = p and p["p50_added_ms"]
    out.append({"check": f"{target} p50 added over in-process ≤ {limit} ms at concurrency 1",
                "value": got, "met": got is not None and got <= limit})
    return out


def fmt(x, digits=1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# Serving benchmark ({results['mode']})", "",
             f"- date: {results['date']}", f"- command: `{results['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; "
             f"torch {m['torch']}, Python {m['python']}; git {m['commit']}",
             f"- model: `{results['model']}` ({results['images']} real test images, PNG), "
             f"{results['duration_s']} s per point after a {results['warmup_s']} s warm-up; client and "
             "servers share the same cores (loopback)",
             f"- servers: {results['servers']}", ""]
    lines += ["## Targets (CPU)", "", "| check | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {v['check']} | {fmt(v['value'], 2)} | {'yes' if v['met'] else '**no**'} |"
              for v in results["verdicts"]]
    lines += ["", "## All points", "",
              "| target | concurrency | req/s | p50 ms | p95 ms | p99 ms | × baseline | × 1-thread baseline | × in-process | p50 added ms | server CPU ms/req | errors | wrong |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in results["points"]:
        lines.append(f"| {p['target']} | {p['concurrency']} | {fmt(p['throughput_rps'])} | {fmt(p['p50_ms'], 2)} | "
                     f"{fmt(p['p95_ms'], 2)} | {fmt(p['p99_ms'], 2)} | {fmt(p['x_baseline'], 2)} | {fmt(p['x_baseline_1t'], 2)} | "
                     f"{fmt(p['x_inprocess'], 2)} | {fmt(p['p50_added_ms'], 2)} | {fmt(p['server_cpu_ms'], 2)} | "
                     f"{p['errors']} | {p['wrong']} |")
    if results.get("inprocess_batches"):
        lines += ["", "## In-process batches (the handler's `predict` on N images at once)", "",
                  "| batch | images/s | ms per batch (p50) |", "| --- | --- | --- |"]
        lines += [f"| {b['batch']} | {fmt(b['images_per_s'])} | {fmt(b['p50_ms'], 2)} |"
                  for b in results["inprocess_batches"]]
    if results.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in results["notes"]]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    points = results["points"]
    targets = list(dict.fromkeys(p["target"] for p in points))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for t in targets:
        ps = sorted((p for p in points if p["target"] == t), key=lambda p: p["concurrency"])
        xs = [p["concurrency"] for p in ps]
        style = dict(marker="o", linestyle="--" if t == BASELINE else "-", linewidth=2.5 if t == BASELINE else 1.5)
        if len(xs) == 1:
            ax1.axhline(ps[0]["throughput_rps"], color="gray", linestyle=":", label=f"{t} (c=1)")
            continue
        ax1.plot(xs, [p["throughput_rps"] for p in ps], label=t, **style)
        ax2.plot(xs, [p["p50_ms"] for p in ps], label=f"{t} p50", **style)
        ax2.plot(xs, [p["p99_ms"] for p in ps], alpha=0.35, linestyle=":", color=ax2.lines[-1].get_color())
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("requests / s (correct answers)")
    ax1.set_title("Throughput")
    ax2.set_ylabel("latency ms (solid p50, dotted p99)")
    ax2.set_yscale("log")
    ax2.set_title("Latency")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7)
    fig.suptitle(f"{results['model']} on {results['machine']['cores']} CPU cores, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
