"""The suite: a store of two versions built by the real archiver; on each runtime in turn (a real
TorchServe, then the KServe-native runtime, on free loopback ports) every scenario; the results as
JSON and as one Markdown table with a column per runtime."""
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
from scripts.harness.reliability.scenarios import (bad_inputs, held_load, overload, process_fault, rollout,
                                                   serving_again)
from scripts.harness.reliability.servers import (LABELS, TORCHSERVE, KServeNativeUnderTest,
                                                 ServerUnderTest, TorchServeUnderTest, kserve_stores)
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
    runtimes: dict[str, list] = field(default_factory=dict)  # runtime → its scenarios' results, in order

    @property
    def passed(self) -> bool:
        return all(s.passed for results in self.runtimes.values() for s in results if not informational(s))


def informational(result) -> bool:
    return getattr(result, "procedure", "") == "naive"


def row_name(result) -> str:
    return result.name + (f" ({result.procedure})" if hasattr(result, "procedure") else "")


TARGETS = {
    "bad_inputs": "each bad input a 4xx naming the problem, each valid-but-odd image the in-process answer, "
                  "good follow-ups all succeed, no 5xx, no restart",
    "held_load": "zero non-200, every answer its own request's",
    "overload": "only 200/503, 503 p95 ≤ {fast} ms, serving again ≤ {rec} s by itself, no restart",
    "process_fault": "serving again ≤ {fault} s after the SIGKILL, no wrong answer; TorchServe (a worker killed, "
                     "the others serve): failed ≤ requests in flight at the kill; KServe-native (its one process "
                     "killed and started again, as the kubelet does): only unanswered requests fail, none once "
                     "serving again",
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
    runtimes = list(suite.runtimes)
    rows = list(dict.fromkeys(row_name(r) for results in suite.runtimes.values() for r in results))
    lines += ["| scenario | target | " + " | ".join(LABELS[r] for r in runtimes) + " |",
              "| --- | --- |" + " --- |" * len(runtimes)]
    for row in rows:
        cells, target = [], ""
        for runtime in runtimes:
            result = next((r for r in suite.runtimes[runtime] if row_name(r) == row), None)
            if result is None:
                cells.append("—")
                continue
            verdict = "info" if informational(result) else "PASS" if result.passed else "FAIL"
            target = "measured to justify the drained procedure" if verdict == "info" else targets[result.name]
            cells.append(f"**{verdict}**: {result.summary().replace('|', '/')}")
        lines.append(f"| {row} | {target} | " + " | ".join(cells) + " |")
    for runtime, results in suite.runtimes.items():
        bad = next((s for s in results if s.name == "bad_inputs"), None)
        if bad is None:
            continue
        lines += ["", f"## Bad and odd inputs: {LABELS[runtime]}", "",
                  "| input | expected | got | reason | message | ok | next good |",
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


def start_server(runtime: str, store: Store, out: Path, rs: ReliabilitySettings,
                 model_settings: ModelServingSettings) -> ServerUnderTest:
    """`runtime` on free loopback ports, serving version 1.0 of the store, with the suite's queue size."""
    mars = {"1.0": store.v1_mar, "2.0": store.v2_mar}
    if runtime == TORCHSERVE:
        ts = TorchServe(store.root, loopback_settings(), out / "run")
        ts.start(timeout=180)
        return TorchServeUnderTest(ts, rs.model, mars, model_settings)
    stores = kserve_stores(store.root / "model-store", mars, out)
    # TorchServe's job_queue_size bounds what waits; here the queue, and the requests in the server
    return KServeNativeUnderTest(stores, out / "run-kserve", rs.model,
                                 {"SERVE_QUEUE_SIZE": str(rs.job_queue_size),
                                  "SERVE_MAX_INFLIGHT": str(rs.kserve_max_inflight)}).start()


def scenarios(server: ServerUnderTest, cases, work: Workload, reference: Reference, rs: ReliabilitySettings,
              mode: str, progress: bool) -> list[tuple[str, Callable]]:
    steps: list[tuple[str, Callable]] = [
        ("bad inputs", lambda: bad_inputs(server, cases, work, reference, rs, progress)),
        ("held load", lambda: held_load(server, work, rs, progress)),
        ("overload", lambda: overload(server, work, rs)),
        ("process fault", lambda: process_fault(server, work, rs, progress)),
    ]
    if mode == "full":
        steps.append(("rollout", lambda: rollout(server, work, rs, progress=progress)))
        if rs.rollout_naive and server.runtime == TORCHSERVE:  # back to 1.0, the naive way
            steps.append(("rollout (naive, informational)", lambda: rollout(server, work, rs, naive=True,
                                                                             progress=progress)))
    return steps


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
    for runtime in rs.runtimes:
        cases = bad_input_cases(images[0], photo, model_settings.max_image_bytes,
                                max_request_size(model_settings.max_image_bytes), runtime)
        say(f"reliability: starting {LABELS[runtime]}")
        server = start_server(runtime, store, out, rs, model_settings)
        served = work.over(server.protocols)
        results = suite.runtimes.setdefault(runtime, [])
        try:
            serving_again(server.url, served, rs, 60, in_a_row=50)  # warm-up (JIT, caches)
            for title, step in scenarios(server, cases, served, reference, rs, mode, progress):
                say(f"reliability: {LABELS[runtime]}: {title} ...")
                result = step()
                results.append(result)
                say(f"  {'PASS' if result.passed else 'FAIL'} {result.summary()}")
        finally:
            server.stop()
    suite.seconds = time.monotonic() - started
    suite.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload = {**{k: v for k, v in asdict(suite).items() if k != "runtimes"}, "passed": suite.passed,
               "settings": asdict(rs),
               "runtimes": {runtime: [{**asdict(s), "summary": s.summary()} for s in results]
                            for runtime, results in suite.runtimes.items()}}
    (out / "results.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    markdown = to_markdown(suite, rs, note)
    (out / "results.md").write_text(markdown)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(markdown)
    return suite
