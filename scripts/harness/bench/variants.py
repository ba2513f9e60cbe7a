"""Variants of one KServe-native runtime measured side by side (tracing_cost.py, auth_cost.py):
their shared flags, the interleaved rounds, and the results table against the first variant."""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from scripts.harness.bench.points import Client, aggregate, run_point
from scripts.serve.settings import DEFAULT_MODEL


def get_args_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("runs") / DEFAULT_MODEL / "model.pt")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per point")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    return p


def interleaved(plan: list[tuple[str, Client, Callable[[], float]]], expected: list[str], concurrency: list[int],
                repeats: int, seconds: float, desc: str) -> list[dict]:
    """Variants of one server side by side (name, client, its CPU clock): every variant at every
    concurrency in each round, the round's order rotated, then one point per (variant,
    concurrency) with medians and the throughput as a fraction of the first variant's."""
    from tqdm import tqdm

    rounds: dict[tuple[str, int], list[dict]] = {}
    with tqdm(total=repeats * len(concurrency) * len(plan), desc=desc, unit="point") as bar:
        for r in range(repeats):
            order = plan[r % len(plan):] + plan[:r % len(plan)]
            for c in concurrency:
                for name, client, cpu in order:
                    bar.set_postfix_str(f"round {r + 1} {name} c={c}")
                    point = run_point(name, client, expected, c, seconds, 1.0, cpu_seconds=cpu)
                    rounds.setdefault((name, c), []).append(point.to_dict())
                    bar.update()
    points = [aggregate(rs) for rs in rounds.values()]
    first = {p["concurrency"]: p["throughput_rps"] for p in points if p["target"] == plan[0][0]}
    names = [name for name, _, _ in plan]
    for p in points:
        p["vs_first"] = round(p["throughput_rps"] / first[p["concurrency"]], 2) if first.get(p["concurrency"]) else None
    return sorted(points, key=lambda p: (p["concurrency"], names.index(p["target"])))


def rps_range(point: dict) -> str:
    """The throughput's range over a point's rounds (one round: its own value)."""
    return f"{point.get('throughput_min', point['throughput_rps'])}–{point.get('throughput_max', point['throughput_rps'])}"


def markdown(title: str, record: dict, notes: list[str], first: str) -> str:
    """The results file: what ran where, `notes` (one line each), one row per point."""
    m = record["machine"]
    lines = [f"# {title}", "", f"- date: {record['date']}", f"- command: `{record['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; "
             f"git {m['commit']}; load average {m['load_average_at_start']} at the start, "
             f"{[round(x, 2) for x in record['load_average']]} at the end",
             f"- model: {record['model']}; {record['images']} real Fashion-MNIST test images, "
             f"{record.get('route', 'raw bytes on the v1 route')}; {record['duration']} s per point, "
             f"{record['repeats']} interleaved rounds (medians)",
             *notes, "",
             f"| runtime | concurrency | req/s | range | p50 ms | p99 ms | server CPU ms/req | × {first} | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in record["points"]:
        lines.append(f"| {p['target']} | {p['concurrency']} | {p['throughput_rps']} | {rps_range(p)} | "
                     f"{p['p50_ms']} | {p['p99_ms']} | {p['server_cpu_ms']} | {p['vs_first']} | {p['errors']} |")
    return "\n".join(lines) + "\n"


def record(module: str, argv: list[str] | None, started: float, host: dict, args: argparse.Namespace, images: int,
           points: list[dict], **extra) -> dict:
    """What a results file holds: when, the command, the machine, the run's settings and points."""
    shown = argv if argv is not None else sys.argv[1:]
    return {"date": datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": f"python -m {module} " + " ".join(shown), "machine": host, "model": DEFAULT_MODEL,
            "images": images, "duration": args.duration, "repeats": args.repeats,
            "load_average": list(os.getloadavg()), "points": points, **extra}


def write(out: Path, stem: str, result: dict, text: str) -> None:
    """<out>/<stem>.json and .md, and the Markdown on the terminal."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
    print(text)
