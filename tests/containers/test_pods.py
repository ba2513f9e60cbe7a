"""Every predictor pod of the chart's values files, run from the runtime images that `make images`
builds, exactly as declared (scripts/containers/pod.py): KServe's pod (tests/deploy/kserve_pod.py: its
container merge and the claim it mounts read-only at /mnt/models) with its command, env, ports,
securityContext, emptyDirs as tmpfs of their sizeLimit, cpu/memory limits, probes and preStop hook.

For each pod: startup and readiness probes pass, the liveness probe passes, the securityContext is
in force inside the container (user, groups, no capabilities, no new privileges, seccomp, read-only
root), the model answers real images right on the InferenceService's protocol at the port KServe
routes it to, and the ports Prometheus is told to scrape serve the model's metrics. Deleting a pod
with requests in flight loses none of them, and the container is gone within its grace period.
Manifests and images broken on purpose fail with the container's own log lines in the message.

A KServe modelcar (oci:// storage) runs as KServe's webhook lays it out: its init check, the
sidecar, the shared process namespace, and predictions through it.

Boundaries: the GPU values file needs an nvidia.com/gpu device (none here); s3:// storage needs an
object store (none here: KServe's storage initializer is replaced by a copy from a local folder,
`object_store_stand_in`); the pod IP is not reachable, so ports are published on 127.0.0.1.
"""
from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from PIL import Image
from skimage import data as skdata

from handlers.settings import AuthSettings
from scripts.serve import archive

from scripts.client import wire

from scripts.deploy import images

from scripts.deploy import modelcar
from scripts.containers import base_images
from scripts.containers.engine import detect
from scripts.monitoring.names import PREDICTIONS
from scripts.containers.pod import PodRunError, PodRunner, quantity, security_context
from tests.helpers import IMAGENET_NAME, MODEL_NAME, metric_value, png_bytes
from tests.deploy.kserve_pod import metrics_ports, of_kind, one, predictor_pod, render, serving_port

pytestmark = pytest.mark.integration  # real pods under podman

REPO = Path(__file__).resolve().parents[2]
CI_VALUES = REPO / "charts" / "image-classifier" / "ci"
NO_GPU_VALUES = [None, *sorted(p.name for p in CI_VALUES.glob("*.yaml") if p.name != "gpu-values.yaml")]
READY_S = 180
PROBE_PERIOD_S = 2  # probes keep their commands, timeouts and thresholds; only the wait between them shrinks
CAT = {"tiger cat", "tabby", "Egyptian cat"}  # scikit-image's chelsea is a tabby cat


def family(name: str) -> str:
    """Which trained model an InferenceService serves (imagenet-grpc is the ImageNet classifier)."""
    return IMAGENET_NAME if name.startswith(IMAGENET_NAME) else MODEL_NAME


def pod_cases() -> list[tuple[str | None, str]]:
    """(values file, InferenceService) for every distinct predictor pod."""
    seen, cases = set(), []
    for values in NO_GPU_VALUES:
        objs = render(values)
        for isvc in of_kind(objs, "InferenceService"):
            if isvc["spec"]["predictor"]["model"]["storageUri"].startswith("oci://"):
                continue  # runs in the modelcar test below
            key = json.dumps([predictor_pod(objs, isvc), isvc["spec"]["predictor"]["model"]["protocolVersion"],
                              isvc["metadata"], sorted(metrics_ports(objs, isvc))], sort_keys=True)
            if key not in seen:
                seen.add(key)
                cases.append((values, isvc["metadata"]["name"]))
    return cases


CASES = pod_cases()


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def runtime_images() -> dict[str, str]:
    """Both runtime images, built as `make images` builds them (layers cached: seconds after the
    first build). No engine or a failed build fails here: nothing is skipped."""
    return images.build(registry_free=True, quiet=True)


@pytest.fixture(scope="module")
def claim_root(trained, imagenet_checkpoint, tmp_path_factory) -> Path:
    """The model claim after the upload step NOTES.txt describes: for every InferenceService of
    the values files, `python -m scripts.serve.archive --model-name <name> --out build/k8s/<path>` then
    `kubectl cp build/k8s/<path> <pod>:/models/<path>`, <path> being its storageUri's path; s3://
    layouts go to <root>/object-store/<bucket>/<path>, the object store's stand-in."""
    root = tmp_path_factory.mktemp("claim")
    checkpoints = {MODEL_NAME: trained, IMAGENET_NAME: imagenet_checkpoint}
    layouts = {}
    for values in NO_GPU_VALUES:
        for isvc in of_kind(render(values), "InferenceService"):
            uri = isvc["spec"]["predictor"]["model"]["storageUri"]
            if uri.startswith("pvc://"):
                layouts[uri.split("/", 3)[3]] = isvc["metadata"]["name"]
            elif uri.startswith(("s3://", "gs://")):
                layouts[f"{OBJECT_STORE}/{uri.split('://', 1)[1]}"] = isvc["metadata"]["name"]
    for path, name in sorted(layouts.items()):
        archive.archive(checkpoints[family(name)], root / path, name)
    return root


@pytest.fixture(scope="module")
def inputs(samples) -> dict[str, tuple[bytes, set[str]]]:
    """Model family → (a real image, the labels a right top-1 may have)."""
    out_dir, listed = samples
    trouser = next(s for s in listed if s["label"] == "Trouser")
    return {MODEL_NAME: ((out_dir / trouser["file"]).read_bytes(), {"Trouser"}),
            IMAGENET_NAME: (png_bytes(Image.fromarray(skdata.chelsea())), CAT)}


OBJECT_STORE = "object-store"  # the stand-in's claim: a folder laid out as <bucket>/<path>


def object_store_stand_in(spec: dict) -> dict:
    """The one stand-in for a boundary that cannot exist here, an object store: KServe's
    storage-initializer init container (its image downloads s3://<bucket>/<path> into the pod's
    emptyDir) becomes a busybox copy of <bucket>/<path> from a local folder. The emptyDir, the
    runtime's read-only mount of it at /mnt/models and everything else stay as KServe lays them out."""
    spec = copy.deepcopy(spec)
    for c in spec.get("initContainers", []):
        if c["name"] != "storage-initializer":
            continue
        uri, dest = c["args"]
        c.pop("env", None)  # credentials for an object store that is not there
        c["image"] = base_images.busybox(detect())
        c["args"] = ["sh", "-c", f"cp -R /{OBJECT_STORE}/{uri.split('://', 1)[1]}/. {dest}/"]
        c["volumeMounts"].append({"name": OBJECT_STORE, "mountPath": f"/{OBJECT_STORE}", "readOnly": True})
        spec["volumes"].append({"name": OBJECT_STORE, "persistentVolumeClaim": {"claimName": OBJECT_STORE}})
    return spec


def runner_for(objs, name: str, claim_root: Path, tmp_path: Path, spec: dict | None = None) -> PodRunner:
    isvc = one(objs, "InferenceService", name)
    spec = object_store_stand_in(spec or predictor_pod(objs, isvc))
    claims = {v["persistentVolumeClaim"]["claimName"]: claim_root for v in spec.get("volumes", [])
              if "persistentVolumeClaim" in v}
    if OBJECT_STORE in claims:
        claims[OBJECT_STORE] = claim_root / OBJECT_STORE
    return PodRunner(spec, name, claims=claims, secrets=secrets_of(objs),
                     extra_ports=tuple(sorted(metrics_ports(objs, isvc))),
                     max_probe_period=PROBE_PERIOD_S, log_dir=tmp_path / "logs")


def secrets_of(objs) -> dict[str, dict[str, str]]:
    """The chart's Secrets as a kubelet would read them (stringData, or data base64-decoded)."""
    out = {}
    for o in of_kind(objs, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
        out[o["metadata"]["name"]] = {**data, **(o.get("stringData") or {})}
    return out


def token_for(objs, name: str) -> str | None:
    """The first token a predictor accepts, when its chart turns authentication on."""
    spec = predictor_pod(objs, one(objs, "InferenceService", name))
    container = spec["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    token_file = AuthSettings.from_env(env).token_file
    if not token_file:
        return None
    mount = next(m for m in container["volumeMounts"] if token_file.startswith(m["mountPath"] + "/"))
    secret = next(v["secret"] for v in spec["volumes"] if v["name"] == mount["name"])
    key = next(i["key"] for i in secret["items"] if f"{mount['mountPath']}/{i['path']}" == token_file)
    tokens = secrets_of(objs)[secret["secretName"]][key]
    return next(line.strip() for line in tokens.splitlines() if line.strip() and not line.startswith("#"))


def routed_port(objs, name: str) -> tuple[str, int]:
    isvc = one(objs, "InferenceService", name)
    protocol = isvc["spec"]["predictor"]["model"]["protocolVersion"]
    knative = isvc["metadata"]["annotations"].get("serving.kserve.io/deploymentMode") == "Knative"
    return protocol, serving_port(predictor_pod(objs, isvc)["containers"][0], protocol, knative)


def call(runner: PodRunner, protocol: str, port: int, model: str, batch: list[bytes],
         token: str | None = None) -> list[dict]:
    try:
        if protocol == "v1":
            return wire.rest_v1(runner.url(port), model, batch, token=token)
        if protocol == "v2":
            return wire.rest_v2(runner.url(port), model, batch, token=token)
        if protocol == "grpc-v2":
            return wire.grpc_oip(runner.address(port), model, batch, token=token)
    except wire.PredictError as e:
        raise PodRunError(f"{protocol} call to {model} on container port {port} failed: {e}\n"
                          f"its log:\n{runner.logs()}") from None
    raise PodRunError(f"unknown protocolVersion {protocol}")


def cgroup_limits(runner: PodRunner) -> tuple[float, int]:
    """(cpus, memory bytes) the container's cgroup enforces, cgroup v1 or v2."""
    out = runner.exec("sh", "-c", "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max 2>/dev/null || "
                                  "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
                                  "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout.split()
    if len(out) == 3 and not out[0].isdigit():  # v2: "max 100000" or "200000 100000", then memory.max
        return (float("inf") if out[0] == "max" else int(out[0]) / int(out[1])), int(out[2])
    return int(out[0]) / int(out[1]), int(out[2])


def assert_security_context_in_force(runner: PodRunner) -> None:
    """What the securityContext and the resource limits declare, read back from inside the running
    container."""
    pod_spec = runner.pod_spec
    sc = security_context(pod_spec, runner.container())
    proc = runner.exec("sh", "-c", "id -u; id -G; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status;"
                                   " touch /written-by-the-test 2>&1; echo touch-exit=$?")
    out = proc.stdout
    lines = out.splitlines()
    assert int(lines[0]) == sc["runAsUser"], out
    groups = {int(g) for g in lines[1].split()}
    fs_group = (pod_spec.get("securityContext") or {}).get("fsGroup")  # none in Knative mode
    assert {sc["runAsGroup"], *([fs_group] if fs_group else [])} <= groups, out
    if "ALL" in sc["capabilities"]["drop"]:
        assert re.search(r"^CapEff:\s+0+$", out, re.M), out
    if sc["allowPrivilegeEscalation"] is False:
        assert re.search(r"^NoNewPrivs:\s+1$", out, re.M), out
    if sc["seccompProfile"]["type"] == "RuntimeDefault":
        assert re.search(r"^Seccomp:\s+2$", out, re.M), out  # 2 = a seccomp filter is in force
    if sc["readOnlyRootFilesystem"]:
        assert "Read-only file system" in out and "touch-exit=0" not in out, out
    limits = runner.container()["resources"]["limits"]
    assert cgroup_limits(runner) == (quantity(limits["cpu"], cpu=True), quantity(limits["memory"])), limits
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for mount in runner.container().get("volumeMounts", []):
        size = (volumes[mount["name"]].get("emptyDir") or {}).get("sizeLimit")
        if size:  # a tmpfs of exactly its sizeLimit, writable by the container's user
            df = runner.exec("sh", "-c", f"df -k {mount['mountPath']} | tail -1; touch {mount['mountPath']}/w && echo w-ok")
            assert int(df.stdout.split()[1]) * 1024 == quantity(size) and "w-ok" in df.stdout, df.stdout


# --- every predictor pod -------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("values, name", CASES, ids=[f"{v or 'default'}-{n}" for v, n in CASES])
def test_predictor_pod_runs_as_declared(values, name, runtime_images, claim_root, inputs, tmp_path):
    objs = render(values)
    image, right = inputs[family(name)]
    protocol, port = routed_port(objs, name)
    with runner_for(objs, name, claim_root, tmp_path) as pod:
        pod.wait_ready(READY_S)
        liveness = pod.probe("livenessProbe")
        assert liveness.ok, liveness.why
        assert_security_context_in_force(pod)
        token = token_for(objs, name)
        if token is not None:  # the chart's Secret, mounted: a call without its token is refused
            with pytest.raises(PodRunError, match="HTTP 401|gRPC UNAUTHENTICATED"):
                call(pod, protocol, port, name, [image])
        answers = call(pod, protocol, port, name, [image, image], token)
        for answer in answers:
            assert len(answer) == 5 and next(iter(answer)) in right, answer
            probabilities = list(answer.values())
            assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-5
        for metrics_port in sorted(metrics_ports(objs, one(objs, "InferenceService", name))):
            assert_counted(pod, metrics_port, top1=next(iter(answers[0])), n=len(answers))


def assert_counted(pod: PodRunner, port: int, top1: str, n: int, deadline_s: float = 15) -> None:
    """The scrape port counts the predictions (TorchServe registers a handler metric from its
    worker's log a moment after the answer: poll)."""
    deadline = time.monotonic() + deadline_s
    while True:
        text = requests.get(f"{pod.url(port)}/metrics", timeout=10).text
        if metric_value(text, PREDICTIONS, label=top1) >= n:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} does not count {n} predictions of {top1!r} after "
                                 f"{deadline_s:.0f} s:\n{text[:1500]}")
        time.sleep(0.5)


@pytest.mark.integration
@pytest.mark.parametrize("values", [None, "grpc-v2-values.yaml"], ids=["torchserve", "kserve-native"])
def test_a_pod_started_before_the_upload_waits_for_its_layout(values, runtime_images, claim_root, inputs,
                                                              tmp_path):
    """KServe mounts a pvc:// claim (no copy), so a predictor may start on an empty folder: it
    waits, saying so in its log, and serves once the layout is copied in (no restart)."""
    objs = render(values)
    name = MODEL_NAME
    path = one(objs, "InferenceService", name)["spec"]["predictor"]["model"]["storageUri"].split("/", 3)[3]
    empty = tmp_path / "claim"
    (empty / path).mkdir(parents=True)  # the kubelet makes a missing subPath folder
    image, right = inputs[family(name)]
    protocol, port = routed_port(objs, name)
    with runner_for(objs, name, empty, tmp_path) as pod:
        deadline = time.monotonic() + 60
        while "waiting for the model layout in /mnt/models" not in pod.logs():
            assert time.monotonic() < deadline, pod.logs()
            time.sleep(0.5)
        assert not pod.probe("startupProbe").ok
        shutil.copytree(claim_root / path, empty / path, dirs_exist_ok=True)  # kubectl cp's part
        pod.wait_ready(READY_S)
        answer = call(pod, protocol, port, name, [image])[0]  # wait_ready fails where the kubelet would restart
    assert next(iter(answer)) in right, answer


def test_every_values_file_without_a_gpu_has_a_pod_case():
    """A new values file (or model) with pvc storage is run above without anyone listing it."""
    covered = {v for v, _ in CASES}
    for values in NO_GPU_VALUES:
        objs = render(values)
        pvc = [i for i in of_kind(objs, "InferenceService")
               if i["spec"]["predictor"]["model"]["storageUri"].startswith("pvc://")]
        assert not pvc or values in covered or all(
            any(c[1] == i["metadata"]["name"] for c in CASES) for i in pvc), values
    runtimes = {one(render(v), "InferenceService", n)["spec"]["predictor"]["model"]["runtime"] for v, n in CASES}
    protocols = {routed_port(render(v), n)[0] for v, n in CASES}
    assert runtimes == {"image-classifier-torchserve", "image-classifier-kserve-native"}
    assert protocols == {"v1", "v2", "grpc-v2"}


# --- deletion with requests in flight ----------------------------------------------------------------

SHUTDOWN_CASES = [("v2-values.yaml", IMAGENET_NAME), (None, IMAGENET_NAME)]  # kserve-native, torchserve
IN_FLIGHT = 12


def delete_with_requests_in_flight(pod: PodRunner, protocol: str, port: int, name: str, image: bytes):
    """IN_FLIGHT clients send one 2-image request each; the pod is deleted while they wait.
    Returns (Counter of outcomes, the containers' final states)."""
    outcomes: list[str] = []

    def client():
        try:
            answer = call(pod, protocol, port, name, [image, image])
            outcomes.append("answered" if all(next(iter(a)) in CAT for a in answer) else f"wrong: {answer}")
        except PodRunError as e:
            outcomes.append(f"dropped: {str(e).splitlines()[0][-120:]}")

    threads = [threading.Thread(target=client) for _ in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every request sent; 24 images of EfficientNet-Lite0 take seconds on 2 cores
    states = pod.stop()
    for t in threads:
        t.join(timeout=120)
    return Counter(o.split(":")[0] for o in outcomes), outcomes, states


@pytest.mark.integration
@pytest.mark.parametrize("values, name", SHUTDOWN_CASES, ids=["kserve-native", "torchserve"])
def test_deleting_a_pod_loses_no_request_in_flight(values, name, runtime_images, claim_root, inputs, tmp_path):
    objs = render(values)
    protocol, port = routed_port(objs, name)
    spec = predictor_pod(objs, one(objs, "InferenceService", name))
    grace = spec["terminationGracePeriodSeconds"]
    with runner_for(objs, name, claim_root, tmp_path, spec) as pod:
        pod.wait_ready(READY_S)
        counts, outcomes, states = delete_with_requests_in_flight(pod, protocol, port, name, inputs[IMAGENET_NAME][0])
        state = states["kserve-container"]
        print(f"\n{name} on {spec['containers'][0]['image']}: {dict(counts)} of {IN_FLIGHT} in flight; "
              f"exited {state['ExitCode']} after {state['seconds']:.1f} s (grace {grace} s, preStop {state['preStop']})")
        assert counts == {"answered": IN_FLIGHT}, outcomes
        assert state["preStop"] == "exec exit 0"
        assert state["seconds"] < grace and state["ExitCode"] != 137 and not state["OOMKilled"], state


@pytest.mark.integration
def test_without_the_drain_torchserve_drops_requests_in_flight(runtime_images, claim_root, inputs, tmp_path):
    """Why the preStop hook exists: TorchServe stops at SIGTERM without answering what it holds."""
    objs = render(None)
    spec = predictor_pod(objs, one(objs, "InferenceService", IMAGENET_NAME))
    del spec["containers"][0]["lifecycle"]
    with runner_for(objs, IMAGENET_NAME, claim_root, tmp_path, spec) as pod:
        pod.wait_ready(READY_S)
        counts, outcomes, states = delete_with_requests_in_flight(pod, "v1", 8080, IMAGENET_NAME,
                                                                  inputs[IMAGENET_NAME][0])
    assert counts["dropped"] > 0, outcomes
    assert states["kserve-container"]["ExitCode"] == 143  # SIGTERM reached TorchServe (tini, not SIGKILL)


# --- broken on purpose: the failure names the cause, with the container's log ---------------------------

def broken_pod(claim_root: Path, tmp_path: Path, values: str | None, name: str, mutate) -> PodRunner:
    objs = render(values)
    spec = copy.deepcopy(predictor_pod(objs, one(objs, "InferenceService", name)))
    mutate(spec["containers"][0])
    return runner_for(objs, name, claim_root, tmp_path, spec)


def run_until_answer(pod: PodRunner, objs, name: str, image: bytes) -> None:
    with pod:
        pod.wait_ready(90)
        protocol, port = routed_port(objs, name)
        call(pod, protocol, port, name, [image])


def drop_tmp(c: dict) -> None:
    """Without the /tmp emptyDir, TorchServe must unpack archives onto the read-only root."""
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"]


def curl_probe(c: dict) -> None:
    """A startup probe whose command the image does not have."""
    c["startupProbe"] = {"exec": {"command": ["curl", "-f", "http://127.0.0.1:8081/ping"]},
                         "periodSeconds": 1, "failureThreshold": 3, "timeoutSeconds": 5}


@pytest.mark.integration
@pytest.mark.parametrize("mutate, message", [
    (drop_tmp, r"(?s)exited.*its log:.*No usable temporary directory"),
    (curl_probe, r"(?s)startupProbe failed 3 times.*curl.*not found.*its log:"),
], ids=["no-writable-tmp", "probe-command-missing"])
def test_a_container_that_cannot_start_fails_with_its_log(mutate, message, runtime_images, claim_root, inputs,
                                                          tmp_path):
    pod = broken_pod(claim_root, tmp_path, None, MODEL_NAME, mutate)
    with pytest.raises(PodRunError, match=message):
        run_until_answer(pod, render(None), MODEL_NAME, inputs[MODEL_NAME][0])


@pytest.mark.integration
def test_a_wrong_container_port_fails(runtime_images, claim_root, inputs, tmp_path):
    """KServe routes REST to the http1 port: one TorchServe does not listen on is unreachable."""
    def wrong_port(c):
        next(p for p in c["ports"] if p["name"] == "http1")["containerPort"] = 8088
    pod = broken_pod(claim_root, tmp_path, None, MODEL_NAME, wrong_port)
    with pod:
        pod.wait_ready(90)
        port = serving_port(pod.container(), "v1")
        assert port == 8088
        with pytest.raises(PodRunError, match=r"(?s)v1 call to fashion-mnist on container port 8088 failed.*its log:"):
            call(pod, "v1", port, MODEL_NAME, [inputs[MODEL_NAME][0]])


@pytest.mark.integration
def test_a_loopback_listener_is_unreachable_from_outside_the_pod(runtime_images, claim_root, inputs, tmp_path):
    """TS_INFERENCE_ADDRESS on 127.0.0.1: the container is healthy inside, unreachable from a Service."""
    def loopback(c):
        next(e for e in c["env"] if e["name"] == "TS_INFERENCE_ADDRESS")["value"] = "http://127.0.0.1:8080"
    pod = broken_pod(claim_root, tmp_path, None, MODEL_NAME, loopback)
    with pod:
        pod.wait_ready(90)  # its exec probes run inside the container, on loopback: they pass
        liveness = pod.probe("livenessProbe")  # httpGet from outside the container, like the kubelet's
        assert not liveness.ok and "on port 8080" in liveness.why, liveness
        with pytest.raises(PodRunError, match=r"v1 call to fashion-mnist on container port 8080 failed"):
            call(pod, "v1", 8080, MODEL_NAME, [inputs[MODEL_NAME][0]])


@pytest.mark.integration
def test_a_file_missing_from_the_image_fails_with_the_containers_log(runtime_images, claim_root, inputs, tmp_path):
    """The KServe-native image built without handlers/: the runtime cannot import its handler."""
    engine = detect()
    dockerfile = images.DOCKERFILES["kserveNative"].read_text()
    assert "COPY handlers/ handlers/\n" in dockerfile
    broken = tmp_path / "Dockerfile.broken"
    broken.write_text(dockerfile.replace("COPY handlers/ handlers/\n", ""))
    name = "localhost/image-classifier/kserve-runtime:broken-no-handlers"
    opts = images.registry_free_options(engine)
    cmd = images.build_commands(None, opts)[1]
    cmd[cmd.index("-f") + 1], cmd[cmd.index("-t") + 1] = str(broken), name
    engine.run(*cmd[1:], timeout=600)

    def use_broken_image(c):
        c["image"] = name
    pod = broken_pod(claim_root, tmp_path, "v2-values.yaml", IMAGENET_NAME, use_broken_image)
    with pytest.raises(PodRunError, match=r"(?s)exited.*its log:.*No module named 'handlers'"):
        run_until_answer(pod, render("v2-values.yaml"), IMAGENET_NAME, inputs[IMAGENET_NAME][0])


# --- modelcar: the storage layout as an image beside the runtime ------------------------------------

@pytest.mark.integration
def test_a_modelcar_serves_the_model_through_the_shared_process_namespace(runtime_images, claim_root, inputs,
                                                                         tmp_path):
    """`make modelcar`'s image for ci/modelcar-values.yaml's oci:// storageUri, run as KServe runs
    it: the modelcar-init check, the runtime with an emptyDir at /mnt and MODEL_INIT_MODE=async, the
    modelcar sidecar linking its /models into /mnt/models through /proc (shared process namespace)."""
    objs = render("modelcar-values.yaml")
    isvc = one(objs, "InferenceService", MODEL_NAME)
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert modelcar.build(claim_root / MODEL_NAME, MODEL_NAME) == uri.removeprefix("oci://")
    spec = predictor_pod(objs, isvc)
    assert [c["name"] for c in spec["containers"]] == ["kserve-container", "modelcar"] and spec["shareProcessNamespace"]
    protocol, port = routed_port(objs, MODEL_NAME)
    with runner_for(objs, MODEL_NAME, claim_root, tmp_path, spec) as pod:
        pod.wait_ready(READY_S)
        link = pod.exec("readlink", "/mnt/models").stdout.strip()
        assert re.fullmatch(r"/proc/\d+/root/models", link), link
        answer = call(pod, protocol, port, MODEL_NAME, [inputs[MODEL_NAME][0]])[0]
        assert next(iter(answer)) in inputs[MODEL_NAME][1], answer
        assert "OK ... Prefetched and valid" in pod.logs("modelcar-init")


@pytest.mark.integration
def test_a_modelcar_without_the_model_fails_its_init_check(runtime_images, claim_root, tmp_path):
    """An image whose /models is missing stops at KServe's modelcar-init check, with its message."""
    objs = render("modelcar-values.yaml")
    spec = predictor_pod(objs, one(objs, "InferenceService", MODEL_NAME))
    empty = base_images.busybox(detect())
    for c in [*spec["initContainers"], spec["containers"][1]]:
        c["image"] = empty
    with pytest.raises(PodRunError, match=r"(?s)init container modelcar-init exited with 1.*NOK \.\.\. Prefetched but"):
        runner_for(objs, MODEL_NAME, claim_root, tmp_path, spec).start()


def test_modelcar_refuses_a_folder_that_is_not_a_layout(tmp_path):
    (tmp_path / "config").mkdir()
    with pytest.raises(modelcar.ModelcarError, match=r"missing config/config.properties, model-store/m.mar"):
        modelcar.check_layout(tmp_path, "m")
