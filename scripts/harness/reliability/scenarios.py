"""The scenarios, each a function of a server under test (servers.py: either runtime) returning a
typed result that judges itself against the targets: bad inputs, held load, overload, process
fault, rollout. Every concurrent phase goes through scripts/harness/load.py."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import requests
from tqdm import tqdm

from scripts.harness.load import Load, Outcome, latency_ms
from scripts.harness.reliability.inputs import Case
from scripts.harness.reliability.servers import ServerUnderTest
from scripts.harness.reliability.settings import ReliabilitySettings
from scripts.harness.reliability.workload import (Answer, Reference, Workload, answer_of, http_sender, matches,
                                                  message_of)


def ms(samples, q: float) -> float:
    """A latency quantile of every answered or failed request, in ms to 0.1."""
    return round(latency_ms(samples, q, only_ok=False), 1)


@dataclass
class CaseResult:
    name: str
    expect: str  # "4xx <reason>" or "200 = in-process answer"
    status: int
    reason: str
    message: str
    ok: bool
    next_good_ok: bool  # the good request sent right after it succeeded


@dataclass
class BadInputsResult:
    cases: list[CaseResult]
    mixed_requests: int  # the mixed phase: every case at once, between good requests
    mixed_failures: list[str]
    pids_before: list[int]  # the serving processes (TorchServe's workers; the runtime)
    pids_after: list[int]
    restarts: int
    passed: bool = False
    name: str = "bad_inputs"

    def summary(self) -> str:
        refused = sum(c.status >= 400 for c in self.cases)
        return (f"{len(self.cases)} kinds ({refused} refused with a 4xx, {len(self.cases) - refused} valid "
                f"but odd answered 200), {sum(not c.ok for c in self.cases)} wrong, "
                f"{sum(not c.next_good_ok for c in self.cases)} good follow-ups failed; mixed phase "
                f"{self.mixed_requests} concurrent requests, {len(self.mixed_failures)} wrong; 5xx: "
                f"{sum(c.status >= 500 for c in self.cases)}; restarts {self.restarts}, "
                f"pids {self.pids_before} → {self.pids_after}")


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    statuses: dict[int, int]
    mismatched: int  # 200s whose answer is not their own request's
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    passed: bool = False
    name: str = "held_load"

    def summary(self) -> str:
        return (f"{self.concurrency} clients × {self.seconds:.0f} s: {self.requests} requests "
                f"({self.throughput_rps:.0f}/s), statuses {self.statuses}, {self.mismatched} mismatched; "
                f"latency p50 {self.p50_ms} / p95 {self.p95_ms} / p99 {self.p99_ms} / max {self.max_ms} ms")


@dataclass
class OverloadResult:
    burst: int
    job_queue_size: int
    statuses: dict[int, int]
    mismatched: int
    p50_503_ms: float
    p95_503_ms: float
    p50_200_ms: float
    message_503: str
    recovered_after_s: float  # from the burst's last answer to 5 good answers in a row
    restarts: int
    passed: bool = False
    name: str = "overload"

    def summary(self) -> str:
        return (f"burst of {self.burst} at once (queue {self.job_queue_size}): statuses {self.statuses}, "
                f"503 p50 {self.p50_503_ms} / p95 {self.p95_503_ms} ms (200 p50 {self.p50_200_ms} ms); "
                f"serving again {self.recovered_after_s:.2f} s after the burst; restarts {self.restarts}")


@dataclass
class FaultResult:
    killed: str  # "worker" (TorchServe: the others keep serving) or "server" (the runtime's one process)
    concurrency: int
    killed_pid: int
    new_pids: list[int]
    in_flight_at_kill: int
    failed: int
    failed_statuses: dict[int, int]  # 0: no answer (the connection reset or refused)
    failed_after_recovery: int  # failures of requests sent after the first good answer
    recovery_s: float  # SIGKILL → first good answer to a request sent after it
    requests: int
    mismatched: int
    restarts: int
    passed: bool = False
    name: str = "process_fault"

    def summary(self) -> str:
        return (f"SIGKILL {self.killed} {self.killed_pid} under {self.concurrency} clients: serving again in "
                f"{self.recovery_s:.2f} s (new pid {self.new_pids}); {self.failed} failed "
                f"{self.failed_statuses} of {self.requests} ({self.failed_after_recovery} after recovery), "
                f"{self.in_flight_at_kill} in flight at the kill; {self.mismatched} mismatched; restarts {self.restarts}")


@dataclass
class RolloutResult:
    procedure: str  # "drained" (the suite's) or "naive" (informational)
    concurrency: int
    steps_s: dict[str, float]
    requests: int
    failed: int
    failed_errors: dict[str, int]
    mismatched: int
    answers_by_version: dict[str, int]
    old_version_after_switch: int  # answers from the old version to requests sent after set-default
    max_latency_ms: float
    passed: bool = False
    name: str = "rollout"

    def summary(self) -> str:
        return (f"{self.procedure}: {self.concurrency} clients, {self.requests} requests, {self.failed} failed "
                f"{self.failed_errors or ''}, {self.mismatched} mismatched, answers by version "
                f"{self.answers_by_version}, old version after the switch {self.old_version_after_switch}, "
                f"max latency {self.max_latency_ms} ms; steps {self.steps_s}")


def _check_case(case: Case, r: requests.Response, expected: Answer | None, tol: float) -> tuple[bool, str, str]:
    reason, message = message_of(r)
    if case.valid is not None:
        return r.status_code == 200 and matches(answer_of(r), expected, tol), "", "" if r.status_code == 200 else message
    ok = r.status_code == case.status and reason == case.reason and case.says.lower() in message.lower()
    return ok, reason, message


def bad_inputs(server: ServerUnderTest, cases: list[Case], work: Workload, reference: Reference,
               rs: ReliabilitySettings, progress: bool = False) -> BadInputsResult:
    url = server.url
    pids_before, restarts_before = server.serving_pids(), server.restarts()
    expected = {c.name: reference.answer(c.valid) for c in cases if c.valid is not None}
    results = []
    for i, case in enumerate(tqdm(cases, desc="bad inputs", leave=False, disable=not progress)):
        session = requests.Session()  # the frontend closes the connection after some refusals (413)
        try:
            r = session.post(url + case.path.format(m=rs.model), timeout=rs.request_timeout_s, **case.kwargs)
            ok, reason, message = _check_case(case, r, expected.get(case.name), rs.match_tolerance)
            status = r.status_code
        except requests.RequestException as e:  # e.g. the connection reset: a failure
            ok, reason, message, status = False, "", f"{type(e).__name__}: {e}", 0
        path, kw, k = work.request(i, rs.model)
        try:
            good = requests.post(url + path, timeout=rs.request_timeout_s, **kw)
            next_ok = good.status_code == 200 and matches(answer_of(good), work.expected[k], rs.match_tolerance)
        except requests.RequestException:
            next_ok = False
        results.append(CaseResult(case.name, "200 = in-process answer" if case.valid is not None else
                                  f"{case.status} {case.reason}".strip(), status, reason, message[:240], ok, next_ok))

    # Mixed phase: every case at once between good requests, so they share the server's batches:
    # a bad request must never change the answer of the good ones batched with it.
    calls: list[tuple] = []  # (name, path, requests kwargs, check of the response)
    for j, case in enumerate(cases):
        calls.append((case.name, case.path.format(m=rs.model), case.kwargs,
                      lambda r, c=case: _check_case(c, r, expected.get(c.name), rs.match_tolerance)[0]))
        path, kw, k = work.request(j, rs.model)
        calls.append((f"good #{k} ({path.split('/')[1]})", path, kw,
                      lambda r, k=k: r.status_code == 200 and matches(answer_of(r), work.expected[k], rs.match_tolerance)))

    def sender():
        def send(i: int) -> Outcome:
            name, path, kw, check = calls[i]
            r = requests.post(url + path, timeout=rs.request_timeout_s, **kw)
            return Outcome(check(r), r.status_code, error=f"{name}: HTTP {r.status_code} {r.text[:120]}")
        return send

    mixed = Load(sender, 16, seconds=rs.request_timeout_s * 4, max_requests=len(calls)).run()
    mixed_failures = [x.error if x.status else f"{calls[x.index][0]}: {x.error.split(':')[0]}"
                      for x in sorted(mixed, key=lambda x: x.index) if not x.ok]
    pids_after = server.serving_pids()
    res = BadInputsResult(results, len(calls), mixed_failures, pids_before, pids_after,
                          server.restarts() - restarts_before)
    res.passed = (all(c.ok and c.next_good_ok for c in results) and not mixed_failures
                  and pids_before == pids_after and res.restarts == 0
                  and not any(c.status >= 500 for c in results))
    return res


# --- scenario: held load ------------------------------------------------------------------------------
def held_load(server: ServerUnderTest, work: Workload, rs: ReliabilitySettings, progress: bool = False) -> LoadResult:
    sender = http_sender(server, work, rs.request_timeout_s, rs.match_tolerance)
    load = Load(sender, rs.load_concurrency, rs.load_seconds, rs.load_max_requests)
    with load:
        load.wait(f"load {rs.load_concurrency}×{rs.load_seconds:.0f}s" if progress else None)
    s = load.samples
    elapsed = max(x.done for x in s) - load.started
    statuses = dict(sorted(Counter(x.status for x in s).items()))
    mismatched = sum(x.status == 200 and not x.ok for x in s)
    res = LoadResult(rs.load_concurrency, round(elapsed, 1), len(s), statuses, mismatched, len(s) / elapsed,
                     ms(s, 0.5), ms(s, 0.95), ms(s, 0.99), ms(s, 1.0))
    res.passed = statuses.keys() == {200} and mismatched == 0
    return res


# --- scenario: overload ---------------------------------------------------------------------------------
def serving_again(url: str, work: Workload, rs: ReliabilitySettings, within: float, in_a_row: int = 5) -> float:
    """Seconds until `in_a_row` good requests in a row get their own answer (inf if not within)."""
    start, streak, i = time.monotonic(), 0, 0
    session = requests.Session()
    while time.monotonic() - start < within:
        path, kw, k = work.request(i, rs.model)
        i += 1
        try:
            r = session.post(url + path, timeout=rs.request_timeout_s, **kw)
            streak = streak + 1 if r.status_code == 200 and matches(answer_of(r), work.expected[k], rs.match_tolerance) else 0
        except requests.RequestException:
            streak = 0
        if streak >= in_a_row:
            return time.monotonic() - start
        if streak == 0:
            time.sleep(0.05)
    return float("inf")


def overload(server: ServerUnderTest, work: Workload, rs: ReliabilitySettings) -> OverloadResult:
    url, pids, restarts = server.url, server.serving_pids(), server.restarts()
    # One request per client, all released together; each client opens its connection first
    # (a health GET) so the burst reaches the server at once.
    sender = http_sender(server, work, rs.request_timeout_s, rs.match_tolerance, open_with=server.ping_path)
    samples = Load(sender, rs.burst, seconds=rs.request_timeout_s * 2, max_requests=rs.burst,
                   per_client=1).run()
    recovered = serving_again(url, work, rs, rs.recover_within_s * 3)

    def q(status: int, p: float) -> float:
        return ms([x for x in samples if x.status == status], p)

    statuses = dict(sorted(Counter(x.status for x in samples).items()))
    mismatched = sum(x.status == 200 and not x.ok for x in samples)
    msg = next((x.error for x in samples if x.status == 503), "")
    res = OverloadResult(rs.burst, rs.job_queue_size, statuses, mismatched, q(503, 0.5), q(503, 0.95), q(200, 0.5),
                         msg[:200], round(recovered, 2), server.restarts() - restarts)
    res.passed = (set(statuses) <= {200, 503} and statuses.get(503, 0) > 0 and mismatched == 0
                  and res.p95_503_ms <= rs.fast_503_p95_s * 1e3 and recovered <= rs.recover_within_s
                  and res.restarts == 0 and server.serving_pids() == pids)
    return res


# --- scenario: process fault -----------------------------------------------------------------------------
def process_fault(server: ServerUnderTest, work: Workload, rs: ReliabilitySettings,
                  progress: bool = False) -> FaultResult:
    """SIGKILL a serving process under load. TorchServe: one worker; the others keep serving, so
    at most the requests in flight may fail. KServe-native: the runtime's one process; it is
    started again (the kubelet's part), so requests fail until it is ready and none after."""
    before, restarts = server.serving_pids(), server.restarts()
    sender = http_sender(server, work, rs.request_timeout_s, rs.match_tolerance)
    load = Load(sender, rs.fault_concurrency, rs.fault_seconds, rs.load_max_requests)
    with load:
        time.sleep(rs.fault_kill_after_s)
        with load.lock:  # no request starts or ends while we count what is in flight
            pid = server.kill()
            killed_at, in_flight = time.perf_counter(), load.in_flight
        server.recover()
        load.wait("process fault" if progress else None)
    s = load.samples
    good_after = [x for x in s if x.sent > killed_at and x.status == 200 and x.ok]
    recovered_at = min((x.done for x in good_after), default=float("inf"))
    failed = [x for x in s if x.status != 200]
    new = server.serving_pids()
    res = FaultResult(server.faulted, rs.fault_concurrency, pid, new, in_flight, len(failed),
                      dict(Counter(x.status for x in failed)), sum(x.sent > recovered_at for x in failed),
                      round(recovered_at - killed_at, 2), len(s), sum(x.status == 200 and not x.ok for x in s),
                      server.restarts() - restarts)
    bounded = (res.failed <= in_flight if server.faulted == "worker"
               else res.failed_after_recovery == 0 and set(res.failed_statuses) <= {0})
    res.passed = (res.recovery_s <= rs.fault_recovery_target_s and bounded and res.mismatched == 0
                  and pid not in new and len(new) == len(before) and res.restarts == 1)
    return res


# --- scenario: rollout ------------------------------------------------------------------------------------
def rollout(server: ServerUnderTest, work: Workload, rs: ReliabilitySettings, naive: bool = False,
            progress: bool = False) -> RolloutResult:
    """The store's other version replaces the one served while clients keep sending (servers.py
    says how on each runtime): no request may fail or get an old-version answer after the switch."""
    old_version, new_version = server.version, server.next_version()
    sender = http_sender(server, work, 20.0 if naive else rs.request_timeout_s, rs.match_tolerance)
    load = Load(sender, rs.rollout_concurrency, rs.rollout_max_s, rs.load_max_requests)
    with load:
        time.sleep(2.0)
        steps, switched = server.roll_out(naive)
        time.sleep(3.0)  # keep serving on the new version alone for a while
        load.stop()
        load.wait("rollout" if progress else None)
    s = load.samples
    failed = [x for x in s if x.status != 200]
    res = RolloutResult("naive" if naive else "drained", rs.rollout_concurrency, steps, len(s), len(failed),
                        dict(Counter(x.error.split(":")[0] or str(x.status) for x in failed)),
                        sum(x.status == 200 and not x.ok for x in s),
                        dict(sorted(Counter(x.version or "none" for x in s if x.status == 200).items())),
                        sum(x.sent > switched + 0.5 and x.version == old_version for x in s),
                        ms(s, 1.0))
    res.passed = (not failed and res.mismatched == 0 and res.old_version_after_switch == 0
                  and res.answers_by_version.get(new_version, 0) > 0)
    return res
