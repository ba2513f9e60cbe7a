"""The MLflow model registry between training and the archive, against a real `mlflow server`
(SQLite backend, local artifact store) on a free loopback port: training registers versions, the
archive takes one by alias or number and records it, both runtimes report it, promoting the alias
and re-archiving rolls out the other version, and what the registry cannot give is a clear error."""
from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
import torch

from handlers import metrics as m
from handlers.spec import ModelSpec
from model import checkpoint, registry, train
from scripts.serve import archive
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import ServerProcess, free_ports
from scripts.serve.settings import loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import metric_value

pytestmark = pytest.mark.integration
NAME = "registry-cnn"


class MlflowServer(ServerProcess):
    name = "mlflow server"

    def __init__(self, run_dir: Path, port: int):
        super().__init__(run_dir, "mlflow.out")
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", "1", "--backend-store-uri", f"sqlite:///{self.run_dir / 'mlflow.db'}",
                "--artifacts-destination", str(self.run_dir / "artifacts")]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_ports(1)[0]).start(timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def runs(server, data_dir, tmp_path_factory) -> dict[str, Path]:
    """Two real training runs tracked by the server: registry version → the run's checkpoint."""
    out = {}
    for seed in (1, 2):
        run_dir = tmp_path_factory.mktemp(f"registry-run-{seed}")
        train.main(["--data-dir", str(data_dir), "--output-dir", str(run_dir), "--epochs", "1", "--train-limit", "400",
                    "--test-limit", "100", "--seed", str(seed), "--no-report", "--mlflow-uri", server.url,
                    "--experiment", "registry-test", "--registered-model", NAME])
        out[str(seed)] = run_dir / "model.pt"
    return out


def client(server):
    return registry.client(server.url)


def archived(out: Path) -> tuple[ModelSpec, dict]:
    with zipfile.ZipFile(out / "model-store" / f"{NAME}.mar") as z:
        spec = ModelSpec.from_dict(json.loads(z.read("model_spec.json")))
        z.extract("weights.pt", out)
    return spec, torch.load(out / "weights.pt", weights_only=True)


def test_each_training_run_registers_a_version_with_its_run(server, runs, capsys):
    versions = {v.version: v for v in client(server).search_model_versions(f"name='{NAME}'")}
    assert sorted(versions) == ["1", "2"]
    run_ids = {v: versions[v].run_id for v in versions}
    assert len(set(run_ids.values())) == 2
    for v, mv in versions.items():  # each version's checkpoint is its own run's
        got = checkpoint.load(registry.download_checkpoint(registry.resolve(f"models:/{NAME}/{v}", server.url),
                                                           Path(server.run_dir) / f"dl-{v}"))
        assert got["args"]["seed"] == int(v) and got["args"]["registered_model"] == NAME


def test_the_archive_takes_the_alias_and_promoting_it_rolls_out_the_other_version(server, runs, tmp_path):
    c = client(server)
    c.set_registered_model_alias(NAME, "champion", "1")
    out = tmp_path / "serve"
    assert archive.main(["--from-registry", f"models:/{NAME}@champion", "--registry-uri", server.url,
                         "--out", str(out)]) == 0
    spec, weights = archived(out)
    first = c.get_model_version(NAME, "1")
    assert (spec.name, spec.version) == (NAME, "1")
    assert spec.source == {"registry": server.url, "name": NAME, "version": "1", "run_id": first.run_id,
                           "alias": "champion"}
    assert all(torch.equal(weights[k], v) for k, v in checkpoint.load(runs["1"])["state_dict"].items())

    c.set_registered_model_alias(NAME, "champion", "2")  # promote, re-archive: the rollout's input
    assert archive.main(["--from-registry", f"models:/{NAME}@champion", "--registry-uri", server.url,
                         "--out", str(out)]) == 0
    spec, weights = archived(out)
    second = c.get_model_version(NAME, "2")
    assert spec.version == "2" and spec.source["run_id"] == second.run_id != first.run_id
    assert all(torch.equal(weights[k], v) for k, v in checkpoint.load(runs["2"])["state_dict"].items())

    # both runtimes serve it as version 2 of the registered model and name its training run
    ts = TorchServe(out, loopback_settings(), tmp_path / "ts").start(timeout=180)
    rt = KServeRuntime(out / "model-store", tmp_path / "rt", *free_ports(2)).start()
    try:
        ready = requests.get(f"{rt.url}/v2/models/{NAME}", timeout=10).json()
        assert ready["versions"] == ["2"]
        described = requests.get(f"{ts.settings.management_url}/models/{NAME}", timeout=10).json()
        assert described[0]["modelVersion"] == "2"
        info = {"ModelName": NAME, "ModelVersion": "2", "format": "eager", "run_id": second.run_id}
        deadline = time.monotonic() + 30  # TorchServe's frontend reads the worker's metric lines a little later
        while metric_value(requests.get(ts.settings.metrics_url, timeout=10).text, m.MODEL_INFO, **info) != 1:
            assert time.monotonic() < deadline, "TorchServe never exported the model's info metric"
            time.sleep(0.5)
        assert metric_value(requests.get(rt.metrics_url, timeout=10).text, m.MODEL_INFO, **info) == 1
    finally:
        rt.stop()
        ts.stop()


def test_what_the_registry_cannot_give_is_a_clear_error(server, runs, tmp_path, capsys):
    def archive_error(uri: str, registry_uri: str = server.url) -> str:
        assert archive.main(["--from-registry", uri, "--registry-uri", registry_uri, "--out", str(tmp_path)]) == 2
        return capsys.readouterr().err

    c = client(server)
    c.set_registered_model_alias(NAME, "champion", "2")
    assert f"registered model '{NAME}' has no alias 'staging'; its aliases: champion" in archive_error(f"models:/{NAME}@staging")
    c.delete_model_version(NAME, "1")
    assert "has no version 1 (deleted, or never registered)" in archive_error(f"models:/{NAME}/1")
    assert "no registered model 'nobody'" in archive_error("models:/nobody@champion")
    assert "not a registry model URI" in archive_error("runs:/abc/model")
    started = time.monotonic()
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    assert f"cannot reach the MLflow registry at {dead}" in archive_error(f"models:/{NAME}@champion", dead)
    assert time.monotonic() - started < 15  # said at once, not after MLflow's minutes of retries
    assert not (tmp_path / "model-store").exists()  # nothing half-written


def test_a_run_tracked_elsewhere_leaves_the_process_default_alone(server, runs, mlflow_store):
    """mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI for the process; training puts it back."""
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_store
