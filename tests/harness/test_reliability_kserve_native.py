"""The reliability scenarios on the KServe-native runtime (scripts/harness/reliability/servers.py):
this module's own runtime over a store of two versions built by the real archiver; every bad input
in its v1/v2 routes, a burst beyond its small queue, its process SIGKILLed and started again on
the same ports, and, last, version 2 rolled out as a second runtime while clients keep sending.
The endpoint the clients follow stands in for a Kubernetes Service, which loopback has not."""
import pytest
import requests
from PIL import Image
from skimage import data as skdata

from handlers.limits import max_request_size
from model import data
from scripts.harness.reliability.inputs import bad_input_cases, encode
from scripts.harness.reliability.scenarios import bad_inputs, overload, process_fault, rollout
from scripts.harness.reliability.servers import KServeNativeUnderTest, kserve_stores
from scripts.harness.reliability.settings import ReliabilitySettings
from scripts.harness.reliability.suite import build_store, start_server
from scripts.harness.reliability.workload import Reference, Workload
from scripts.serve.process import process_alive
from scripts.serve.settings import ModelServingSettings

pytestmark = pytest.mark.integration

RS = ReliabilitySettings.quick()


@pytest.fixture(scope="module")
def suite(trained, test_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("rel-kserve")
    store = build_store(trained, root / "store", RS)
    reference = Reference(store.root / "model-store" / store.v1_mar)
    listed = data.export_samples(test_split, root / "samples", per_class=2)
    server = start_server("kserve-native", store, root, RS, ModelServingSettings())
    work = Workload.from_images([(root / "samples" / s["file"]).read_bytes() for s in listed], reference)
    yield server, reference, work.over(server.protocols)
    server.stop()


def test_each_version_gets_a_store_of_its_own(tmp_path):
    (tmp_path / "model-store").mkdir()
    for name in ("m.mar", "m-v2.mar"):
        (tmp_path / "model-store" / name).write_bytes(name.encode())
    stores = kserve_stores(tmp_path / "model-store", {"1.0": "m.mar", "2.0": "m-v2.mar"}, tmp_path)
    assert {v: sorted(p.name for p in s.iterdir()) for v, s in stores.items()} == {"1.0": ["m.mar"], "2.0": ["m-v2.mar"]}


def test_the_runtime_speaks_v1_and_v2_only_and_starts_on_version_1(suite):
    server, _, work = suite
    assert isinstance(server, KServeNativeUnderTest) and server.version == "1.0"
    assert set(work.protocols) == {"v1", "v2"}
    assert requests.post(f"{server.url}/predictions/{RS.model}", data=work.images[0], timeout=10).status_code == 404


def test_every_bad_input_gets_a_named_4xx_and_odd_images_their_answer(suite):
    server, reference, work = suite
    m = ModelServingSettings()
    photo = encode(Image.fromarray(skdata.chelsea()), "JPEG", quality=90)
    cases = bad_input_cases(work.images[0], photo, m.max_image_bytes, max_request_size(m.max_image_bytes),
                            runtime="kserve-native")
    assert sum(c.valid is None for c in cases) >= 30 and not any(c.path.startswith("/predictions") for c in cases)
    result = bad_inputs(server, cases, work, reference, RS)
    wrong = [c for c in result.cases if not (c.ok and c.next_good_ok)]
    assert not wrong, wrong
    refused = {c.name: c for c in result.cases if c.expect != "200 = in-process answer"}
    assert refused["body over the request-size limit"].status == 413
    assert refused["20000x20000 PNG bomb (49 KB)"].reason == "image_too_large"
    assert all(400 <= c.status < 500 for c in refused.values())
    assert not result.mixed_failures and result.restarts == 0 and result.pids_before == result.pids_after
    assert result.passed


def test_a_burst_beyond_its_queue_gets_fast_503s_and_it_recovers_by_itself(suite):
    server, _, work = suite
    result = overload(server, work, RS)
    assert result.statuses.get(503, 0) > 0 and set(result.statuses) <= {200, 503}, result.summary()
    assert "requests in progress" in result.message_503 or "queue" in result.message_503, result.message_503
    assert result.mismatched == 0 and result.passed, result.summary()


def test_a_killed_runtime_is_started_again_and_fails_only_while_down(suite):
    server, _, work = suite
    (pid,) = server.serving_pids()
    result = process_fault(server, work, RS)
    assert result.killed == "server" and result.killed_pid == pid and not process_alive(pid)
    assert result.new_pids and result.new_pids != [pid] and result.restarts == 1
    assert result.failed > 0 and set(result.failed_statuses) == {0}, result.summary()  # refused while down
    assert result.failed_after_recovery == 0 and result.mismatched == 0, result.summary()
    assert result.recovery_s <= RS.fault_recovery_target_s and result.passed, result.summary()


def test_rollout_to_version_2_as_a_second_runtime_loses_no_request(suite):
    """Last in this module: it replaces the served runtime. Version 2 starts beside version 1,
    the endpoint moves to it, version 1 stops with SIGTERM: no request fails or gets another's
    answer, both versions answered, none from 1.0 after the switch, and 1.0's process is gone."""
    server, _, work = suite
    (old_pid,) = server.serving_pids()
    old_url = server.url
    result = rollout(server, work, RS)
    assert result.failed == 0 and result.mismatched == 0, result.summary()
    assert result.answers_by_version.get("1.0", 0) > 0 and result.answers_by_version.get("2.0", 0) > 0, result.summary()
    assert result.old_version_after_switch == 0 and result.passed, result.summary()
    assert server.version == "2.0" and server.url != old_url and not process_alive(old_pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{old_url}/v2/health/live", timeout=5)
