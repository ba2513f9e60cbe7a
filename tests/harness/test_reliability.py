"""The reliability suite: run_suite end to end on both real runtimes (the quick subset, as
`make reliability RELIABILITY_ARGS=--quick` runs it), then each scenario on this module's own
TorchServe: every bad input, a short overload burst, a worker SIGKILL and, last, the rollout to
version 2 (the KServe-native runtime's own: test_reliability_kserve_native.py). The full suite
(60 s load, naive rollout too) is `make reliability`."""
import io
import json
import socket

import pytest
import requests
from PIL import Image
from skimage import data as skdata

from handlers.limits import max_request_size
from model import data
from scripts.serve import policy
from scripts.serve.settings import ModelServingSettings, loopback_settings
from scripts.serve.torchserve import TorchServe, snapshot_models
from scripts.harness.reliability.cli import main as reliability_main
from scripts.harness.reliability import suite as reliability_suite
from scripts.harness.reliability.inputs import b64, bad_input_cases, encode, raw_png
from scripts.harness.reliability import servers
from scripts.harness.reliability.scenarios import bad_inputs, overload, process_fault, rollout
from scripts.harness.reliability.servers import TorchServeUnderTest
from scripts.harness.reliability.settings import ReliabilitySettings
from scripts.harness.reliability.suite import build_store
from scripts.harness.reliability.workload import Reference, Workload, matches
from tests.helpers import MODEL_NAME

pytestmark = pytest.mark.integration

RS = ReliabilitySettings.quick()


def test_raw_png_header_claims_any_size_in_a_few_bytes():
    bomb = raw_png(20_000, 20_000, bit_depth=1)
    assert len(bomb) < 100_000
    with pytest.raises(Image.DecompressionBombError, match="400000000 pixels"):  # Pillow reads the header
        Image.open(io.BytesIO(bomb))


def test_matches_needs_the_same_top1_and_probabilities():
    ref = {"Bag": 0.9, "Shirt": 0.09, "Coat": 0.0, "Dress": 0.0}
    assert matches({"Bag": 0.90001, "Shirt": 0.09, "Dress": 0.0, "Coat": 0.0}, ref, 1e-4)
    assert not matches({"Shirt": 0.9, "Bag": 0.09}, ref, 1e-4)
    assert not matches({"Bag": 0.8, "Shirt": 0.19}, ref, 1e-4)
    assert not matches({"error": "x"}, ref, 1e-4)


def test_the_quick_suite_runs_both_runtimes_end_to_end_and_records_one_table(trained, data_dir, tmp_path,
                                                                             monkeypatch):
    """The CLI (`python -m scripts.harness.reliability --quick`): TorchServe, then the KServe-native
    runtime, each on its own free loopback ports, every quick scenario passing on both,
    results.json/.md and the --record copy written, every server stopped. Runs before this module's
    own server starts, so the two never compete for the CPUs."""
    started, ports = [], []

    def settings():  # the suite's own choice of ports, noted to check they are closed after
        started.append(loopback_settings())
        return started[-1]

    def free_ports(n):
        ports.extend(chosen := servers_free_ports(n))
        return chosen

    servers_free_ports = servers.free_ports
    monkeypatch.setattr(reliability_suite, "loopback_settings", settings)
    monkeypatch.setattr(servers, "free_ports", free_ports)
    out, record = tmp_path / "out", tmp_path / "docs" / "reliability.md"
    rc = reliability_main(["--checkpoint", str(trained), "--data-dir", str(data_dir), "--out", str(out), "--quick",
                           "--load-seconds", "3", "--no-progress", "--record", str(record), "--note", "from a test"])
    results = json.loads((out / "results.json").read_text())
    assert list(results["runtimes"]) == ["torchserve", "kserve-native"]
    failing = [s["summary"] for r in results["runtimes"].values() for s in r if not s["passed"]]
    assert rc == 0 and results["passed"], failing
    for runtime, listed in results["runtimes"].items():
        scenarios = {s["name"]: s for s in listed}
        assert list(scenarios) == ["bad_inputs", "held_load", "overload", "process_fault"], runtime  # quick: no rollout
        assert scenarios["held_load"]["statuses"] == {"200": scenarios["held_load"]["requests"]}, runtime
        assert scenarios["process_fault"]["restarts"] == 1, runtime
        assert scenarios["overload"]["statuses"].get("503", 0) > 0, runtime
    kserve = {s["name"]: s for s in results["runtimes"]["kserve-native"]}
    assert kserve["process_fault"]["killed"] == "server" and kserve["process_fault"]["failed_after_recovery"] == 0
    assert results["mode"] == "quick" and results["settings"]["load_seconds"] == 3
    assert "from a test" not in results["command"] and "--load-seconds 3" in results["command"]
    markdown = (out / "results.md").read_text()
    assert record.read_text() == markdown and "- overall: PASS" in markdown and "\nfrom a test\n" in markdown
    assert "| scenario | target | TorchServe | KServe-native |" in markdown
    for name in ("bad_inputs", "held_load", "overload", "process_fault"):
        (row,) = [line for line in markdown.splitlines() if line.startswith(f"| {name} |")]
        assert row.count("**PASS**") == 2, row
    assert "## Bad and odd inputs: TorchServe" in markdown and "## Bad and odd inputs: KServe-native" in markdown
    (used,) = started
    assert len(ports) == 2  # the KServe-native runtime's HTTP and gRPC ports (restarted on the same)
    for host, port in [(used.host, p) for p in (used.inference_port, used.management_port, used.metrics_port)] + [
            ("127.0.0.1", p) for p in ports]:
        with pytest.raises(ConnectionRefusedError):  # every server was stopped
            socket.create_connection((host, port), timeout=5).close()


@pytest.fixture(scope="module")
def suite(trained, test_split, tmp_path_factory):
    """Its own TorchServe: model API on, a small queue, and a worker this module may kill."""
    store = build_store(trained, tmp_path_factory.mktemp("rel-store"), RS)
    reference = Reference(store.root / "model-store" / store.v1_mar)
    out = tmp_path_factory.mktemp("rel-samples")
    listed = data.export_samples(test_split, out, per_class=2)
    work = Workload.from_images([(out / s["file"]).read_bytes() for s in listed], reference)
    ts = TorchServe(store.root, loopback_settings(), tmp_path_factory.mktemp("rel-run"))
    ts.start(timeout=180)
    server = TorchServeUnderTest(ts, RS.model, {"1.0": store.v1_mar, "2.0": store.v2_mar}, ModelServingSettings())
    yield server, store, reference, work
    ts.stop()


def test_config_has_the_model_api_and_the_small_queue(suite):
    server, store, _, _ = suite
    ts = server.ts
    text = ts.config.read_text()
    assert "enable_model_api=true\n" in text and f"job_queue_size={RS.job_queue_size}\n" in text
    assert (store.root / "model-store" / store.v2_mar).exists()
    assert snapshot_models(ts.config) == {MODEL_NAME: ["1.0"]}  # v2 waits for the rollout


def test_every_bad_input_gets_a_named_4xx_and_odd_images_their_answer(suite):
    server, _, reference, work = suite
    m = ModelServingSettings()
    photo = encode(Image.fromarray(skdata.chelsea()), "JPEG", quality=90)
    cases = bad_input_cases(work.images[0], photo, m.max_image_bytes,
                                        max_request_size(m.max_image_bytes))
    assert sum(c.valid is None for c in cases) >= 25
    result = bad_inputs(server, cases, work, reference, RS)
    wrong = [c for c in result.cases if not (c.ok and c.next_good_ok)]
    assert not wrong, wrong
    assert all(400 <= c.status < 500 for c in result.cases if c.expect != "200 = in-process answer")
    assert not result.mixed_failures
    assert result.restarts == 0 and result.pids_before == result.pids_after
    assert result.passed


def test_parameters_that_are_not_an_object_are_a_400_not_a_503(suite):
    """Was a 503 for the whole server batch (AttributeError in the worker); the bad-input mixed
    phase checks that it no longer touches the good requests batched with it."""
    server, _, _, work = suite
    url = server.url
    bad = {"instances": [b64(work.images[0])], "parameters": "topk=3"}
    r = requests.post(f"{url}/v1/models/{MODEL_NAME}:predict", json=bad, timeout=30)
    assert r.status_code == 400 and '"parameters" must be a JSON object' in r.json()["error"]


def test_overload_burst_gets_fast_503s_and_recovers_by_itself(suite):
    server, _, _, work = suite
    result = overload(server, work, RS)
    assert result.statuses.get(503, 0) > 0 and set(result.statuses) <= {200, 503}, result.summary()
    assert "no worker to serve" in result.message_503  # TorchServe's words for a full queue
    assert result.mismatched == 0
    assert result.passed, result.summary()


def test_worker_sigkill_under_load_recovers_within_15s(suite):
    server, _, _, work = suite
    result = process_fault(server, work, RS)
    assert result.killed == "worker" and result.killed_pid not in result.new_pids and result.restarts == 1
    assert result.recovery_s <= 15, result.summary()
    assert result.failed <= result.in_flight_at_kill, result.summary()
    assert result.passed, result.summary()


def test_rollout_to_version_2_under_load_loses_no_request(suite):
    """Last in this module: it changes the served version. Register 2.0 (in the model store, not
    in the snapshot), make it the default and unregister 1.0 while clients keep sending: no request
    fails or gets another's answer, 1.0 answers before the switch, never after, and 2.0 alone is
    left, READY."""
    server, _, _, work = suite
    ts = server.ts
    assert [d["modelVersion"] for d in ts.model_status(MODEL_NAME)] == ["1.0"] and server.version == "1.0"
    result = rollout(server, work, RS)
    assert result.failed == 0 and result.mismatched == 0, result.summary()
    assert result.answers_by_version.get("1.0", 0) > 0 and result.answers_by_version.get("2.0", 0) > 0, result.summary()
    assert result.old_version_after_switch == 0, result.summary()
    assert result.passed, result.summary()
    (left,) = ts.model_status(MODEL_NAME)
    assert left["modelVersion"] == "2.0" and server.version == "2.0"
    assert [w["status"] for w in left["workers"]] == ["READY"] * policy.LIGHT.torchserve_worker_count
