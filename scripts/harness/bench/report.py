"""The bench's results: ratios within one run, the CPU targets, a Markdown table and a
PNG plot."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scripts.harness.bench.limit import table as sweep_table  # noqa: E402

BASELINE = "fastapi-baseline"
BASELINE_1T = "fastapi-1-thread"  # the same app with OMP_NUM_THREADS=1: the stricter comparison
INPROCESS = "in-process"
TARGET_CONCURRENCY = 8
LIMIT_SHARE = 0.8  # the best served path at concurrency 8, as a share of the in-process limit
# ... for the real-size models: the default CNN's forward takes well under a millisecond, so its
# limit is the batched forward alone and no server comes near it (reported, not a target)
LIMIT_TARGET_MODELS = ("imagenet", "resnet50")
INT8 = "-int8"  # the int8 archive's targets: measured against the int8 limit, never the fp32 one


def is_int8(target: str) -> bool:
    return target.endswith(INT8)


@dataclass(frozen=True)
class Target:
    """A throughput check: `target` over `against` (a baseline, or any other target) at
    `concurrency`, at least `minimum`."""

    target: str
    minimum: float
    concurrency: int = TARGET_CONCURRENCY
    against: str = BASELINE


# The CPU targets per model. The default CNN: throughput at concurrency 8, TorchServe's at 1, and
# the p50 the runtime adds; its ONNX archive: ONNX Runtime in-process 1.5× the eager pipeline, and the KServe-native
# runtime on it 2.5× the FastAPI app. The real-size models: at least the FastAPI app at 1 and 8
# clients, 1.5× at 8 (eager, ONNX and int8 archives alike), and the best served path close to the
# machine's in-process limit (fp32 and int8 each against their own).
THROUGHPUT_TARGETS = {
    "fashion-mnist": [Target("kserve-rest", 1.0), Target("kserve-rest", 1.0, against=BASELINE_1T),
                      Target("torchserve-rest", 0.5), Target("torchserve-rest", 0.5, against=BASELINE_1T),
                      Target("torchserve-rest", 0.5, 1),  # a lone client: no batch delay to wait out
                      Target("in-process-onnx", 1.5, 1, against=INPROCESS), Target("kserve-rest-onnx", 2.5)],
    **{m: [check for t, ts in (("kserve-rest", "torchserve-rest"), ("kserve-rest-onnx", "torchserve-rest-onnx"),
                               ("kserve-rest-int8", "torchserve-rest-int8"))
           for check in (Target(t, 1.0, 1), Target(t, 1.5), Target(ts, 1.0))]
       for m in ("imagenet", "resnet50")},
}
ADDED_P50_TARGET = ("kserve-rest", 2.0)  # ms over the in-process p50, at concurrency 1 (the default CNN)


def by_key(points: list[dict]) -> dict[tuple[str, int], dict]:
    return {(p["target"], p["concurrency"]): p for p in points}


def add_ratios(points: list[dict], limit: dict | None = None) -> None:
    """Throughput ratio to the baseline at the same concurrency, to the in-process pipeline (one
    request at a time) and to the machine's in-process limit (end to end); p50 added over the
    in-process p50."""
    index = by_key(points)
    inproc = index.get((INPROCESS, 1))
    for p in points:
        for key, name in (("x_baseline", BASELINE), ("x_baseline_1t", BASELINE_1T)):
            base = index.get((name, p["concurrency"]))
            p[key] = round(p["throughput_rps"] / base["throughput_rps"], 3) if base and base["throughput_rps"] else None
        p["x_inprocess"] = round(p["throughput_rps"] / inproc["throughput_rps"], 3) if inproc and inproc["throughput_rps"] else None
        p["p50_added_ms"] = round(p["p50_ms"] - inproc["p50_ms"], 3) if inproc else None
        own = (limit or {}).get("int8") if is_int8(p["target"]) else limit
        if own:
            p["x_limit"] = round(p["throughput_rps"] / own["end_to_end_images_per_s"], 3)


def spread_verdict(p: dict, base: dict, minimum: float) -> str:
    """MET or MISS by the medians; SPREAD when the rounds' ranges leave the answer open (the
    target's worst round over the baseline's best is below the minimum while the medians meet
    it, or the other way round)."""
    met = p["throughput_rps"] >= minimum * base["throughput_rps"]
    if "throughput_min" not in p or "throughput_min" not in base:
        return "MET" if met else "MISS"
    surely = p["throughput_min"] >= minimum * base["throughput_max"]
    surely_not = p["throughput_max"] < minimum * base["throughput_min"]
    return "MET" if met and surely else "MISS" if not met and surely_not else "SPREAD"


def verdicts(points: list[dict], bench_model: str = "fashion-mnist") -> list[dict]:
    """Each target's check: `met` by the medians, `verdict` MET / MISS / SPREAD (see spread_verdict)."""
    index = by_key(points)
    out = []
    for t in THROUGHPUT_TARGETS.get(bench_model, []):
        p, base = index.get((t.target, t.concurrency)), index.get((t.against, t.concurrency))
        got = round(p["throughput_rps"] / base["throughput_rps"], 3) if p and base and base["throughput_rps"] else None
        what = {BASELINE: "the baseline", BASELINE_1T: "the 1-thread baseline"}.get(t.against, t.against)
        met = got is not None and got >= t.minimum
        out.append({"check": f"{t.target} throughput ≥ {t.minimum}× {what} at concurrency {t.concurrency}",
                    "value": got, "met": met,
                    "verdict": spread_verdict(p, base, t.minimum) if got is not None else "MISS"})
    if bench_model == "fashion-mnist":
        target, limit = ADDED_P50_TARGET
        p = index.get((target, 1))
        got = p and p["p50_added_ms"]
        met = got is not None and got <= limit
        out.append({"check": f"{target} p50 added over in-process ≤ {limit} ms at concurrency 1",
                    "value": got, "met": met, "verdict": "MET" if met else "MISS"})
    for int8, what in ((False, "the in-process limit"), (True, "the int8 in-process limit")):
        served = [p for p in points if p["concurrency"] == TARGET_CONCURRENCY and p.get("x_limit") is not None
                  and p["target"] not in (BASELINE, BASELINE_1T, INPROCESS) and is_int8(p["target"]) == int8]
        if served and bench_model in LIMIT_TARGET_MODELS:
            best = max(served, key=lambda p: p["x_limit"])
            met = best["x_limit"] >= LIMIT_SHARE
            out.append({"check": f"best served path ({best['target']}) ≥ {LIMIT_SHARE}× {what} at "
                                 f"concurrency {TARGET_CONCURRENCY}", "value": best["x_limit"], "met": met,
                        "verdict": "MET" if met else "MISS"})
    return out


def policy_text(policy: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in policy.items() if v is not None)


def fmt(x, digits=1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    load = results.get("load_average") or {}
    repeats = results.get("repeats", 1)
    lines = [f"# Serving benchmark ({results['mode']}): {results.get('bench_model', 'fashion-mnist')}", "",
             f"- date: {results['date']}", f"- command: `{results['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; "
             f"torch {m['torch']}, Python {m['python']}; git {m['commit']}"
             + (f"; load average {load.get('start')} at the start, {load.get('end')} at the end" if load else ""),
             f"- model: {results['model']} ({results['images']} real images), "
             f"{results['duration_s']} s per point after a {results['warmup_s']} s warm-up"
             + (f", {repeats} interleaved rounds per point (medians; req/s range over the rounds)" if repeats > 1 else "")
             + "; client and servers share the same cores (loopback)",
             *([f"- environment: {' '.join(f'{k}={v}' for k, v in results['environment'].items())}"]
               if results.get("environment") else []),
             *([f"- the {'eager ' if results.get('onnx_serving_policy') else ''}archive's serving policy "
                "(scripts/serve/policy.py): " + policy_text(results["serving_policy"])]
               if results.get("serving_policy") else []),
             *(["- the ONNX archive's serving policy (the `-onnx` targets): " + policy_text(results["onnx_serving_policy"])]
               if results.get("onnx_serving_policy") else []),
             *(["- the int8 archive's serving policy (the `-int8` targets): " + policy_text(results["int8_serving_policy"])]
               if results.get("int8_serving_policy") else []),
             f"- servers: {results['servers']}", ""]
    lines += ["## Targets (CPU)", "", "| check | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {v['check']} | {fmt(v['value'], 2)} | {v.get('verdict', 'MET' if v['met'] else 'MISS')} |"
              for v in results["verdicts"]]
    if any(v.get("verdict") == "SPREAD" for v in results["verdicts"]):
        lines += ["", "SPREAD: the medians say one thing, the rounds' ranges allow the other; not a win."]
    limit = results.get("limit")
    lines += ["", "## All points", "",
              "| target | concurrency | req/s | range | p50 ms | p95 ms | p99 ms | × baseline | × 1-thread baseline | "
              "× in-process | × limit | p50 added ms | server CPU ms/req | errors | wrong |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in results["points"]:
        span = f"{fmt(p['throughput_min'])}–{fmt(p['throughput_max'])}" if "throughput_min" in p else "–"
        lines.append(f"| {p['target']} | {p['concurrency']} | {fmt(p['throughput_rps'])} | {span} | {fmt(p['p50_ms'], 2)} | "
                     f"{fmt(p['p95_ms'], 2)} | {fmt(p['p99_ms'], 2)} | {fmt(p['x_baseline'], 2)} | {fmt(p['x_baseline_1t'], 2)} | "
                     f"{fmt(p['x_inprocess'], 2)} | {fmt(p.get('x_limit'), 2)} | {fmt(p['p50_added_ms'], 2)} | "
                     f"{fmt(p['server_cpu_ms'], 2)} | {p['errors']} | {p['wrong']} |")
    if limit:
        lines += ["", "## The machine's limit (in-process forward pass; scripts/harness/bench/limit.py)", "",
                  *sweep_table(limit)]
        lines += ["", f"Best {fmt(limit['best']['images_per_s'])} images/s ({limit['best_setting']}); decoding and "
                  f"preprocessing {fmt(limit['preprocess_ms'], 2)} ms per image on one thread: "
                  f"{fmt(limit['end_to_end_images_per_s'])} images/s end to end, the × limit column's base."]
        if limit.get("int8"):
            q = limit["int8"]
            lines += ["", f"int8 (the `-int8` targets' base): best {fmt(q['best']['images_per_s'])} images/s "
                      f"({q['best_setting']}), {fmt(q['end_to_end_images_per_s'])} images/s end to end."]
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
        ys = [p["throughput_rps"] for p in ps]
        if all("throughput_min" in p for p in ps):  # the rounds' range around the median
            err = [[y - p["throughput_min"] for y, p in zip(ys, ps)], [p["throughput_max"] - y for y, p in zip(ys, ps)]]
            ax1.errorbar(xs, ys, yerr=err, label=t, capsize=3, **style)
        else:
            ax1.plot(xs, ys, label=t, **style)
        ax2.plot(xs, [p["p50_ms"] for p in ps], label=f"{t} p50", **style)
        ax2.plot(xs, [p["p99_ms"] for p in ps], alpha=0.35, linestyle=":", color=ax2.lines[-1].get_color())
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.grid(True, alpha=0.3)
    if results.get("limit"):
        ax1.axhline(results["limit"]["end_to_end_images_per_s"], color="black", linestyle="-.",
                    label="in-process limit (end to end)")
        if results["limit"].get("int8"):
            ax1.axhline(results["limit"]["int8"]["end_to_end_images_per_s"], color="dimgray", linestyle=(0, (1, 3)),
                        label="int8 in-process limit (end to end)")
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
