"""The suite: a store of two versions built by the real archiver, a real TorchServe on free
loopback ports, every scenario in turn, and the results as JSON and Markdown."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from PIL import Image
from tqdm import tqdm

from handlers.limits import max_request_size
from scripts.harness import machine
from scripts.harness.reliability.inputs import bad_input_cases, encode
from scripts.harness.reliability.scenarios import (bad_inputs, held_load, overload, rollout, serving_again,
                                                   worker_fault)
from scripts.harness.reliability.settings import ReliabilitySettings
from scripts.harness.reliability.workload import Reference, Workload
from scripts.serve import archive
from scripts.serve.settings import DEFAULT_MODEL, FrontendSettings, ModelServingSettings, loopback_settings
from scripts.serve.torchserve import TorchServe


@dataclass(frozen=True)
class Store:
    root: Path
    v1_mar: str
    v2_mar: str  # in the model store, NOT in the snapshot: the rollout registers it


def build_store(checkpoint: Path, out: Path, rs: ReliabilitySettings,
                model_settings: ModelServingSettings | None = None) -> Store:
    """Version 1.0 in the snapshot (config with the model API on and a small queue), version 2.0
    of the same weights beside it in the model store (same answers, told apart by x-model-version)."""
    shutil.rmtree(out, ignore_errors=True)
    frontend = FrontendSettings(job_queue_size=rs.job_queue_size, enable_model_api=True)
    mar, _ = archive.archive(checkpoint, out, rs.model, version="1.0", model_settings=model_settings,
                             frontend=frontend)
    with tempfile.TemporaryDirectory(prefix="reliability-v2-") as tmp:
        v2, _ = archive.archive(checkpoint, Path(tmp), rs.model, version="2.0", model_settings=model_settings)
        v2_name = f"{rs.model}-v2.mar"
        shutil.copy2(v2, out / "model-store" / v2_name)
    return Store(out, mar.name, v2_name)


@dataclass
class SuiteResult:
    mode: str
    started: str
    seconds: float
    machine: dict
    command: str
    scenarios: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scenarios if getattr(s, "procedure", "") != "naive")


TARGETS = {
    "bad_inputs": "each bad input a 4xx naming the problem, each valid-but-odd image the in-process answer, "
                  "good follow-ups all succeed, no 5xx, zero worker restarts",
    "held_load": "zero non-200, every answer its own request's",
    "overload": "only 200/503, 503 p95 ≤ {fast} ms, serving again ≤ {rec} s by itself, no restart",
    "worker_fault": "serving again ≤ {fault} s, failed ≤ requests in flight at the kill",
    "rollout": "zero failed requests, no old-version answer after the switch",
}


def to_markdown(suite: SuiteResult, rs: ReliabilitySettings, note: str = "") -> str:
    m = suite.machine
    lines = [f"# Reliability suite results ({suite.mode})", "",
             f"- date: {suite.started} ({suite.seconds:.0f} s)",
             f"- command: `{suite.command}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; Python {m['python']}, "
             f"torch {m['torch']}, TorchServe {m['torchserve']}; load average at start {m['load_average_at_start']}"
             f", at end {m.get('load_average_at_end')}",
             f"- overall: {'PASS' if suite.passed else 'FAIL'}", ""]
    if note:
        lines += [note.strip(), ""]
    targets = {k: v.format(fast=round(rs.fast_503_p95_s * 1e3), rec=rs.recover_within_s,
                           fault=rs.fault_recovery_target_s) for k, v in TARGETS.items()}
    lines += ["| scenario | target | measured | result |", "| --- | --- | --- | --- |"]
    for s in suite.scenarios:
        label = s.name + (f" ({s.procedure})" if hasattr(s, "procedure") else "")
        verdict = ("info" if getattr(s, "procedure", "") == "naive" else "PASS" if s.passed else "FAIL")
        target = "measured to justify the drained procedure" if verdict == "info" else targets[s.name]
        lines.append(f"| {label} | {target} | {s.summary().replace('|', '/')} | {verdict} |")
    bad = next((s for s in suite.scenarios if s.name == "bad_inputs"), None)
    if bad is not None:
        lines += ["", "## Bad and odd inputs", "", "| input | expected | got | reason | message | ok | next good |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in bad.cases:
            msg = c.message.replace("|", "/").replace("\n", " ")[:110]
            lines.append(f"| {c.name} | {c.expect} | {c.status} | {c.reason} | {msg} | {'✓' if c.ok else '✗'} | "
                         f"{'✓' if c.next_good_ok else '✗'} |")
        if bad.mixed_failures:
            lines += ["", "Mixed-phase failures: " + "; ".join(bad.mixed_failures)]
    return "\n".join(lines) + "\n"


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: str(o)).replace("Infinity", "null"))


def run_suite(checkpoint: Path, data_dir: Path, out: Path, rs: ReliabilitySettings, mode: str,
              command: str, progress: bool = True, note: str = "", record: Path | None = None) -> SuiteResult:
    from skimage import data as skdata

    from model import data

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    suite = SuiteResult(mode, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), 0.0, machine.describe(), command)
    model_settings = ModelServingSettings()
    say = (lambda text: tqdm.write(text)) if progress else (lambda text: None)
    say(f"reliability: building the store in {out / 'store'}")
    store = build_store(checkpoint, out / "store", rs, model_settings)
    reference = Reference(store.root / "model-store" / store.v1_mar)
    data.ensure_fashion_mnist(data_dir)
    samples = data.export_samples(data.load(DEFAULT_MODEL, data_dir, train=False), out / "samples", per_class=4)
    images = [(out / "samples" / s["file"]).read_bytes() for s in samples]
    work = Workload.from_images(images, reference)
    photo = encode(Image.fromarray(skdata.chelsea()), "JPEG", quality=90)
    cases = bad_input_cases(images[0], photo, model_settings.max_image_bytes,
                            max_request_size(model_settings.max_image_bytes))
    ts = TorchServe(store.root, loopback_settings(), out / "run")
    say("reliability: starting TorchServe")
    ts.start(timeout=180)
    try:
        serving_again(ts.settings.inference_url, work, rs, 60, in_a_row=50)  # warm-up (JIT, caches)
        steps: list[tuple[str, Callable]] = [
            ("bad inputs", lambda: bad_inputs(ts, cases, work, reference, rs, progress)),
            ("held load", lambda: held_load(ts, work, rs, progress)),
            ("overload", lambda: overload(ts, work, rs)),
            ("worker fault", lambda: worker_fault(ts, work, rs, progress)),
        ]
        if mode == "full":
            steps.append(("rollout", lambda: rollout(ts, work, rs, store.v2_mar, "2.0", "1.0", model_settings,
                                                     progress=progress)))
            if rs.rollout_naive:
                steps.append(("rollout (naive, informational)",
                              lambda: rollout(ts, work, rs, store.v1_mar, "1.0", "2.0", model_settings,
                                              naive=True, progress=progress)))
        for title, step in steps:
            say(f"reliability: {title} ...")
            result = step()
            suite.scenarios.append(result)
            say(f"  {'PASS' if result.passed else 'FAIL'} {result.summary()}")
    finally:
        ts.stop()
    suite.seconds = time.monotonic() - started
    suite.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload = {**{k: v for k, v in asdict(suite).items() if k != "scenarios"}, "passed": suite.passed,
               "settings": asdict(rs), "scenarios": [{**asdict(s), "summary": s.summary()} for s in suite.scenarios]}
    (out / "results.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    markdown = to_markdown(suite, rs, note)
    (out / "results.md").write_text(markdown)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(markdown)
    return suite
