"""`make serve` / `make stop` / `make predict` through their CLIs, against a real TorchServe."""
import json
import shutil
import zipfile

import pytest

from scripts.client import predict

from scripts.serve import cli as serve
from scripts.serve.process import process_alive, read_pid
from scripts.serve.torchserve import TorchServe, TorchServeError
from scripts.serve.settings import loopback_settings
from tests.helpers import MODEL_NAME

pytestmark = pytest.mark.integration


@pytest.fixture
def serve_env(monkeypatch):
    s = loopback_settings()
    for name in ("inference_port", "management_port", "metrics_port", "grpc_inference_port",
                 "grpc_management_port", "frontend_metrics_port", "inference_upstream_port",
                 "grpc_inference_upstream_port"):
        monkeypatch.setenv(f"SERVE_{name.upper()}", str(getattr(s, name)))
    return s


def test_serve_start_predict_stop(store, samples, serve_env, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["--store", str(store), "--run-dir", str(run_dir)]
    assert serve.main(["start", *args]) == 0
    pid = read_pid(run_dir / "torchserve.pid")
    try:
        out = capsys.readouterr().out
        assert f"{serve_env.inference_url}/predictions/{MODEL_NAME}" in out
        assert serve_env.metrics_url in out
        assert serve.main(["status", *args]) == 0
        assert serve.main(["start", *args]) == 1  # a second start refuses, naming the pid
        assert f"already running (pid {pid})" in capsys.readouterr().err

        out_dir, listed = samples
        assert predict.main([str(out_dir / listed[0]["file"]), "--model", MODEL_NAME]) == 0
        printed = capsys.readouterr().out
        assert listed[0]["file"] in printed and len(printed.strip().splitlines()) == 6
        assert predict.main([str(tmp_path / "missing.png"), "--model", MODEL_NAME]) == 1
        assert "no such file" in capsys.readouterr().err
    finally:
        assert serve.main(["stop", *args]) == 0
    assert not process_alive(pid)
    assert serve.main(["status", *args]) == 1
    assert "not running" in capsys.readouterr().out


def test_serve_with_a_token_file_asks_every_caller_for_a_token(store, samples, serve_env, tmp_path, capsys,
                                                               monkeypatch):
    run_dir = tmp_path / "run"
    args = ["--store", str(store), "--run-dir", str(run_dir)]
    monkeypatch.setenv("SERVE_TOKEN_FILE", str(tmp_path / "no-such-file"))
    assert serve.main(["start", *args]) == 2
    assert "is not a file" in capsys.readouterr().err
    (tmp_path / "tokens").write_text("cli-token-8e21\n")
    monkeypatch.setenv("SERVE_TOKEN_FILE", str(tmp_path / "tokens"))
    monkeypatch.delenv("SERVE_TOKEN", raising=False)
    assert serve.main(["start", *args]) == 0
    try:
        assert "Authorization: Bearer" in capsys.readouterr().out
        image = str(samples[0] / samples[1][0]["file"])
        assert predict.main([image, "--model", MODEL_NAME]) == 1
        assert "HTTP 401" in capsys.readouterr().err
        assert predict.main([image, "--model", MODEL_NAME, "--token", "cli-token-8e21"]) == 0
    finally:
        assert serve.main(["stop", *args]) == 0


def test_a_model_that_cannot_load_fails_fast_with_the_workers_error(store, tmp_path):
    broken = tmp_path / "store"
    shutil.copytree(store, broken)
    mar = broken / "model-store" / f"{MODEL_NAME}.mar"
    with zipfile.ZipFile(mar) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    spec = json.loads(entries["model_spec.json"])
    spec["arch"]["kwargs"]["num_classes"] = 3  # weights no longer fit the network
    entries["model_spec.json"] = json.dumps(spec).encode()
    with zipfile.ZipFile(mar, "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)
    ts = TorchServe(broken, loopback_settings(), tmp_path / "run")
    with pytest.raises(TorchServeError, match="(?s)failed to load.*size mismatch"):
        ts.start(timeout=120)
    assert not process_alive(read_pid(ts.pid_file) or ts.proc.pid)
