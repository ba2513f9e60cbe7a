"""`make demo` (scripts/demo.py) end to end: train → evaluate → archive → serve → predict → metrics
→ stop, on a real TorchServe on free loopback ports. The demo takes no size flags, so it gets a
data folder holding the first 6,000 real Fashion-MNIST training images and 2,000 test images in the
IDX files it reads (minutes less training; the chain is the same); its printed predictions must be
the in-process answers of the archives it built."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from handlers.classifier import ImageClassifier
from model import checkpoint, data
from scripts import demo
from scripts.serve.settings import METRIC_REQUESTS_TOTAL, loopback_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CAT = {"tabby", "tiger cat", "Egyptian cat"}  # scikit-image's chelsea is a tabby cat
TRAIN_IMAGES, TEST_IMAGES = 6000, 2000


@pytest.fixture(scope="module")
def small_data_dir(data_dir, tmp_path_factory) -> Path:
    """<dir>/FashionMNIST/raw with the first real images of each part, in torchvision's format."""
    out = tmp_path_factory.mktemp("demo-data")
    raw = out / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, train, n in (("train", True, TRAIN_IMAGES), ("t10k", False, TEST_IMAGES)):
        ds = data.load("fashion-mnist", data_dir, train=train)
        data.write_idx(raw / f"{prefix}-images-idx3-ubyte", ds.data[:n].numpy())
        data.write_idx(raw / f"{prefix}-labels-idx1-ubyte", ds.targets[:n].numpy())
    return out


def serve_env(monkeypatch) -> object:
    """SERVE_* for TorchServe's five listeners on free loopback ports (the demo reads the env)."""
    settings = loopback_settings()
    for field in ("host", "inference_port", "management_port", "metrics_port", "grpc_inference_port",
                  "grpc_management_port"):
        monkeypatch.setenv(f"SERVE_{field.upper()}", str(getattr(settings, field)))
    return settings


def in_process(mar: Path, tmp: Path) -> ImageClassifier:
    with zipfile.ZipFile(mar) as z:
        z.extractall(tmp)
    return ImageClassifier.load(tmp)


def test_demo_runs_the_whole_chain_and_prints_the_models_answers(small_data_dir, tmp_path, monkeypatch, capsys):
    settings = serve_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the demo writes runs/imagenet/model.pt relative to where it runs
    run_dir, build = tmp_path / "runs" / "fashion-mnist", tmp_path / "build"
    assert demo.main(["--data-dir", str(small_data_dir), "--run-dir", str(run_dir), "--build-dir", str(build),
                      "--epochs", "2"]) == 0
    out = capsys.readouterr().out

    steps = re.findall(r"^=== (.+?) =*$", out, re.M)
    assert [s.split(" ")[0] for s in steps] == ["train", "evaluate", "archive:", "serve", "predict", "metrics", "stop"]
    ckpt = checkpoint.load(run_dir / "model.pt")
    assert ckpt["args"]["epochs"] == 2 and ckpt["metrics"]["accuracy"] > 0.7  # far above chance (0.1)
    assert {"eval.json", "report.md", "last.pt"} <= {p.name for p in run_dir.iterdir()}
    store = build / "serve"
    assert sorted(p.name for p in (store / "model-store").glob("*.mar")) == ["fashion-mnist.mar", "imagenet.mar"]
    assert (store / "config" / "config.properties").is_file()

    # every sample's printed answer is the archive's in-process top-1, and the tally adds up
    samples_dir = build / "samples"
    listed = data.export_samples(data.load("fashion-mnist", small_data_dir, train=False), tmp_path / "expected")
    assert sorted(p.name for p in samples_dir.glob("*.png")) == sorted(s["file"] for s in listed)
    reference = in_process(store / "model-store" / "fashion-mnist.mar", tmp_path / "fm")
    correct = 0
    for s in listed:
        (line,) = [line for line in out.splitlines() if line.startswith(s["file"])]
        true_label, predicted, rest = line[29:41].strip(), line[42:54].strip(), line[55:].split()
        top = reference.predict([(samples_dir / s["file"]).read_bytes()])[0]
        label, prob = next(iter(top.items()))
        assert (true_label, predicted) == (s["label"], label), line
        assert float(rest[0]) == pytest.approx(prob, abs=1.5e-4)
        assert rest[1] == ("ok" if label == s["label"] else "WRONG")
        correct += label == s["label"]
    assert f"\n{correct}/{len(listed)} correct\n" in out

    # the cat photo through the ImageNet model: its top 3 in-process, a cat first
    (cat_line,) = [line for line in out.splitlines() if line.startswith("chelsea.jpg (a cat)")]
    imagenet = in_process(store / "model-store" / "imagenet.mar", tmp_path / "in")
    expected = list(imagenet.predict([(samples_dir / "chelsea.jpg").read_bytes()])[0])[:3]
    assert re.fullmatch(", ".join(re.escape(label) + r" [01]\.[0-9]{3}" for label in expected),
                        cat_line.split(": ", 1)[1]), (cat_line, expected)
    assert expected[0] in CAT
    assert Image.open(samples_dir / "chelsea.jpg").size == Image.fromarray(skdata.chelsea()).size

    # the metrics step printed the server's own counter: the ten requests to the custom model
    counted = [line for line in out.splitlines()
               if line.startswith(f"  {METRIC_REQUESTS_TOTAL}{{") and 'model_name="fashion-mnist"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == len(listed), counted
    # and the stop step stopped it
    assert "TorchServe stopped" in out
    for port in (settings.inference_port, settings.management_port, settings.metrics_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((settings.host, port), timeout=5).close()


def test_demo_stops_with_a_named_error_when_a_step_fails(tmp_path):
    """`python -m scripts.demo` without the data: exit status 1 and the reason, nothing served."""
    env = {**os.environ, "FASHION_MNIST_DIR": str(tmp_path / "no-package"),
           "SERVE_INFERENCE_PORT": str(loopback_settings().inference_port)}
    done = subprocess.run([sys.executable, "-m", "scripts.demo", "--data-dir", str(tmp_path / "data"),
                           "--run-dir", str(tmp_path / "run"), "--build-dir", str(tmp_path / "build")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "demo: error: Fashion-MNIST not found" in done.stderr and "dataset-fashion-mnist" in done.stderr
    assert "=== serve" not in done.stdout and not (tmp_path / "build").exists()
