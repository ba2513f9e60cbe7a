"""scripts/containers without running a container: the podman invocations a rendered predictor pod
becomes (every securityContext field, emptyDirs as tmpfs of their sizeLimit, the claim's subPath
read-only, limits, the command as the entrypoint), the kubelet's checks and expansions, and the
engine's settings for these machines. tests/containers/test_pods.py runs the same pods for real."""
from __future__ import annotations

import json

import pytest

from scripts.containers import engine as engine_mod
from scripts.containers.engine import Engine
from scripts.containers.pod import PodRunError, PodRunner, expand, quantity
from tests.deploy.kserve_pod import one, predictor_pod, render


def runner(spec: dict, claims=None, tmp_path=None) -> PodRunner:
    return PodRunner(spec, "fashion-mnist", claims=claims or {}, engine=Engine("podman"))


@pytest.fixture
def torchserve_pod(tmp_path):
    objs = render(None)
    spec = predictor_pod(objs, one(objs, "InferenceService", "fashion-mnist"))
    (tmp_path / "fashion-mnist").mkdir()
    return spec, {"image-classifier-models": tmp_path}


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


@pytest.mark.integration
def test_the_rendered_pod_becomes_one_run_with_every_declared_setting(torchserve_pod, tmp_path):
    spec, claims = torchserve_pod
    r = runner(spec, claims)
    container = spec["containers"][0]
    args = r.run_args(container)
    assert flag_values(args, "--user") == ["10001:10001"] and flag_values(args, "--group-add") == ["10001"]
    assert "--read-only" in args and "--read-only-tmpfs=false" in args  # no tmpfs podman would add itself
    assert flag_values(args, "--cap-drop") == ["ALL"] and "no-new-privileges" in flag_values(args, "--security-opt")
    assert flag_values(args, "--cpus") == ["2"] and flag_values(args, "--memory") == [str(4 * 2**30)]
    assert flag_values(args, "--cpu-shares") == ["1024"]
    assert flag_values(args, "--stop-timeout") == [str(spec["terminationGracePeriodSeconds"])]
    volumes = flag_values(args, "-v")
    assert f"{r.volume_root / 'tmp'}:/tmp" in volumes and f"{r.volume_root / 'logs'}:/home/model-server/logs" in volumes
    assert f"{tmp_path / 'fashion-mnist'}:/mnt/models:ro" in volumes
    assert json.loads(flag_values(args, "--entrypoint")[0]) == container["command"]
    env = dict(e.split("=", 1) for e in flag_values(args, "-e"))
    assert env == {e["name"]: e["value"] for e in container["env"]}
    assert args[args.index(container["image"]) + 1:] == []  # no args: nothing after the image


@pytest.mark.integration
def test_every_declared_and_probed_port_is_published_on_loopback_only(torchserve_pod):
    spec, claims = torchserve_pod
    r = runner(spec, claims)
    args = r.pod_create_args()
    published = flag_values(args, "-p")
    assert sorted(int(p.rsplit(":", 1)[1]) for p in published) == [7070, 8080, 8082]
    assert all(p.startswith("127.0.0.1:") for p in published)
    assert "pid" not in flag_values(args, "--share")[0]  # shareProcessNamespace unset


@pytest.mark.integration
def test_kubelet_checks_and_expansion(torchserve_pod):
    spec, claims = torchserve_pod
    root = json.loads(json.dumps(spec))
    root["containers"][0]["securityContext"]["runAsUser"] = 0
    with pytest.raises(PodRunError, match="runAsNonRoot and image will run as root"):
        runner(root, claims).check_run_as_non_root(root["containers"][0])
    missing = json.loads(json.dumps(spec))
    missing["containers"][0]["volumeMounts"][-1]["subPath"] = "fashion-mnist-v2"
    with pytest.raises(PodRunError, match="subPath 'fashion-mnist-v2' does not exist in claim"):
        runner(missing, claims).run_args(missing["containers"][0])
    secret = json.loads(json.dumps(spec))
    secret["containers"][0]["env"].append({"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})
    with pytest.raises(PodRunError, match="env K: only literal values run locally"):
        runner(secret, claims).run_args(secret["containers"][0])
    assert expand("ln -sf /proc/$$$$/root/models $(DIR) $(NOPE)", {"DIR": "/mnt/models"}) == \
        "ln -sf /proc/$$/root/models /mnt/models $(NOPE)"


@pytest.mark.integration
def test_the_modelcar_pod_shares_its_process_namespace_and_runs_its_init_check_first():
    objs = render("modelcar-values.yaml")
    spec = predictor_pod(objs, one(objs, "InferenceService", "fashion-mnist"))
    r = runner(spec)
    cmds = r.commands()
    assert "net,ipc,uts,pid" in cmds[0] and cmds[0][:3] == ["podman", "pod", "create"]
    init, runtime, sidecar = cmds[1], cmds[2], cmds[3]
    shared = f"{r.volume_root / 'kserve-provision-location'}:/mnt"
    assert shared in flag_values(runtime, "-v") and shared in flag_values(sidecar, "-v")
    assert "-d" not in init and init[init.index("--name") + 1].endswith("-modelcar-init")
    assert runtime[-1] != "sh" and "MODEL_INIT_MODE=async" in runtime
    assert sidecar[-3:] == ["sh", "-c", "ln -sf /proc/$$/root/models /mnt/models && sleep infinity"]
    assert flag_values(sidecar, "--cpus") == ["0.01"] and flag_values(sidecar, "--memory") == [str(15 * 2**20)]


def test_quantities():
    assert quantity("500m", cpu=True) == 0.5 and quantity("2", cpu=True) == 2
    assert quantity("2Gi") == 2**31 and quantity("64M") == 64e6
    with pytest.raises(PodRunError, match="cannot read quantity"):
        quantity("2GB")


def test_podman_settings_for_hybrid_and_pure_v2_cgroups():
    hybrid = engine_mod.podman_conf(cgroups_v2_only=False)
    assert 'runtime = "runc"' in hybrid and "default_ulimits" in hybrid
    assert "runtime" not in engine_mod.podman_conf(cgroups_v2_only=True)
    nofile = next(u for u in engine_mod.ulimits() if u.startswith("nofile="))
    import resource
    assert int(nofile.split(":")[1]) <= resource.getrlimit(resource.RLIMIT_NOFILE)[1]
