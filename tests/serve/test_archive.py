import json
import zipfile
from dataclasses import replace

import pytest
import torch

from handlers.classifier import ImageClassifier
from handlers.spec import ModelSpec
from model import checkpoint
from scripts.runtime.mar import read_spec
from scripts.serve import archive, policy
from handlers.settings import ServingSettings
from scripts.serve.torchserve import snapshot_models
from tests.helpers import IMAGENET_NAME, MODEL_NAME


def test_mar_holds_exactly_what_serving_needs(unpacked_mar, manifest):
    files = {p.relative_to(unpacked_mar).as_posix() for p in unpacked_mar.rglob("*") if p.is_file()}
    assert files == {"MAR-INF/MANIFEST.json", "weights.pt", "model_spec.json", "small_cnn.py",
                     "torchserve_handler.py", "handlers/__init__.py", "handlers/classifier.py",
                     "handlers/errors.py", "handlers/inputs.py", "handlers/preprocess.py",
                     "handlers/responses.py", "handlers/limits.py", "handlers/metrics.py",
                     "handlers/spec.py", "handlers/accel.py", "handlers/settings.py", "handlers/networks.py",
                     "handlers/auth.py"}
    assert manifest["model"] == {"modelName": MODEL_NAME, "serializedFile": "weights.pt",
                                 "handler": "torchserve_handler.py", "modelVersion": "1.0"}


@pytest.mark.parametrize("fmt, network", [("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt"),
                                          ("onnx-int8", "model.int8.onnx")])
def test_an_exported_archive_holds_the_exported_network_and_no_python_class(trained, tmp_path, fmt, network):
    mar, _ = archive.archive(trained, tmp_path, "exported", fmt=fmt)
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        spec = ModelSpec.from_dict(json.loads(z.read("model_spec.json")))
    assert network in names and not {"weights.pt", "small_cnn.py"} & names, names
    assert spec.format == fmt and spec.network_file == network
    assert archive.read_manifest(mar)["model"]["serializedFile"] == network


def test_spec_in_the_archive_comes_from_the_checkpoint(unpacked_mar, trained):
    ckpt = checkpoint.load(trained)
    spec = ModelSpec.load(unpacked_mar)
    assert list(spec.labels) == ckpt["labels"]
    assert spec.preprocess == checkpoint.preprocess_spec(ckpt)
    assert (spec.name, spec.version, spec.arch.cls) == (MODEL_NAME, "1.0", "SmallCNN")


def test_archived_model_predicts_like_the_checkpoint(unpacked_mar, trained):
    net = checkpoint.build_net(checkpoint.load(trained))
    served = ImageClassifier.load(unpacked_mar)
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(served.infer(x), torch.softmax(net(x), 1), atol=1e-6)


def test_config_properties_is_kserve_layout_with_safe_defaults(store):
    config = store / "config" / "config.properties"
    props = dict(line.split("=", 1) for line in config.read_text().splitlines()
                 if line and not line.startswith("#"))
    defaults = ServingSettings()
    assert props["inference_address"] == defaults.inference_url
    # the frontend's own metrics, on loopback: the exporter serves the metrics port
    assert props["metrics_address"] == f"http://127.0.0.1:{defaults.frontend_metrics_port}"
    assert props["metrics_mode"] == "prometheus"
    assert props["enable_envvars_config"] == "true"
    assert props["enable_model_api"] == "false"  # models only from the snapshot (FrontendSettings)
    assert props["job_queue_size"] == "100"
    assert props["model_store"] == "/mnt/models/model-store"
    models = json.loads(props["model_snapshot"])["models"]
    assert models[MODEL_NAME]["1.0"]["marName"] == f"{MODEL_NAME}.mar"
    assert snapshot_models(config) == {MODEL_NAME: ["1.0"], IMAGENET_NAME: ["1.0"]}


def test_config_lists_every_mar_in_the_store(trained, tmp_path):
    archive.archive(trained, tmp_path, "first")
    archive.archive(trained, tmp_path, "second", version="2.0")
    assert snapshot_models(tmp_path / "config" / "config.properties") == {"first": ["1.0"], "second": ["2.0"]}


def test_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    assert archive.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_each_archive_run_stages_in_its_own_temp_dir(trained, tmp_path, monkeypatch):
    """torch-model-archiver stages in $TMPDIR/<model name>, removing whatever is there first: two
    archives of one name built at once (tests beside a benchmark) broke each other. A file in the
    shared spot would make the archiver fail if it still used it."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    (shared / "race").write_text("another archiver's staging")
    monkeypatch.setenv("TMPDIR", str(shared))
    mar, _ = archive.archive(trained, tmp_path / "out", "race")
    assert mar.exists() and (shared / "race").read_text() == "another archiver's staging"


def test_each_model_gets_its_policy_and_the_snapshot_follows_each_archive(store):
    """The default CNN batches (up to 8 images, no wait, two TorchServe workers); EfficientNet-Lite0
    runs one image per pass: each
    archive's spec says so, and config.properties has it from there."""
    config = dict(line.split("=", 1) for line in (store / "config" / "config.properties").read_text().splitlines()
                  if line.startswith("model_snapshot="))
    models = json.loads(config["model_snapshot"])["models"]
    for name, expected in ((MODEL_NAME, policy.LIGHT), (IMAGENET_NAME, policy.HEAVY)):
        assert read_spec(store / "model-store" / f"{name}.mar").serving == expected
        entry = models[name]["1.0"]
        assert (entry["minWorkers"], entry["maxWorkers"], entry["batchSize"], entry["maxBatchDelay"]) == (
            expected.torchserve_worker_count, expected.torchserve_worker_count, expected.batch_size,
            expected.max_batch_delay_ms)


def test_the_cli_overrides_the_policy_field_by_field(trained, tmp_path, capsys):
    out = tmp_path / "out"
    assert archive.main(["--checkpoint", str(trained), "--out", str(out), "--model-name", "m", "--policy", "heavy",
                         "--workers", "2", "--torch-threads", "1"]) == 0
    serving = read_spec(out / "model-store" / "m.mar").serving
    assert serving == replace(policy.HEAVY, workers=2, torch_threads=1)
    snapshot = next(line for line in (out / "config" / "config.properties").read_text().splitlines()
                    if line.startswith("model_snapshot="))
    assert json.loads(snapshot.split("=", 1)[1])["models"]["m"]["1.0"]["minWorkers"] == 2
    assert archive.main(["--checkpoint", str(trained), "--out", str(out), "--batch-size", "0"]) == 2
    assert "workers and batch_size must be >= 1" in capsys.readouterr().err
