"""Shared fixtures that build real objects: the real Fashion-MNIST test split (Debian package),
real PNG samples, a checkpoint trained by the real training CLI, a `.mar` built by the real
archiver, and a real TorchServe on free loopback ports."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from model import data, imagenet, train
from scripts import archive
from scripts.settings import DEFAULT_MODEL, loopback_settings
from scripts.torchserve import TorchServe

MODEL_NAME = DEFAULT_MODEL
IMAGENET_NAME = "imagenet"


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Training runs in tests track into a temporary MLflow store, never ./mlruns."""
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    data.ensure_fashion_mnist(d)
    return d


@pytest.fixture(scope="session")
def test_split(data_dir):
    return data.load(DEFAULT_MODEL, data_dir, train=False)


@pytest.fixture(scope="session")
def samples(test_split, tmp_path_factory) -> tuple[Path, list[dict]]:
    """One real test image per class as PNG, with its true label."""
    out = tmp_path_factory.mktemp("samples")
    return out, data.export_samples(test_split, out)


@pytest.fixture(scope="session")
def trained(data_dir, tmp_path_factory) -> Path:
    """A checkpoint from the real training CLI on a subset (seconds, not the full recipe)."""
    out = tmp_path_factory.mktemp("run")
    train.main(["--data-dir", str(data_dir), "--output-dir", str(out), "--epochs", "2",
                "--train-limit", "6000", "--test-limit", "1000", "--seed", "1"])
    return out / "model.pt"


@pytest.fixture(scope="session")
def imagenet_checkpoint(tmp_path_factory) -> Path:
    """The packaged ImageNet EfficientNet-Lite0 in our checkpoint format (model/imagenet.py)."""
    out = tmp_path_factory.mktemp("imagenet") / "model.pt"
    assert imagenet.main(["--variant", "lite0", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def store(trained, imagenet_checkpoint, tmp_path_factory) -> Path:
    """KServe storage layout with two real `.mar` files from torch-model-archiver, served side by
    side: the custom Fashion-MNIST model and the ImageNet classifier."""
    out = tmp_path_factory.mktemp("serve")
    archive.archive(trained, out, MODEL_NAME)
    archive.archive(imagenet_checkpoint, out, IMAGENET_NAME)
    return out


@pytest.fixture(scope="session")
def unpacked_mar(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mar")
    with zipfile.ZipFile(store / "model-store" / f"{MODEL_NAME}.mar") as z:
        z.extractall(out)
    return out


@pytest.fixture(scope="session")
def manifest(unpacked_mar) -> dict:
    return json.loads((unpacked_mar / "MAR-INF" / "MANIFEST.json").read_text())


@pytest.fixture(scope="session")
def torchserve(store, tmp_path_factory):
    """A real TorchServe (Java frontend + Python worker) on free loopback ports."""
    ts = TorchServe(store, loopback_settings(), tmp_path_factory.mktemp("ts-run"))
    ts.start(timeout=180)
    yield ts
    ts.stop()


def assert_same_topk(got: dict, expected: dict, abs_tol: float = 1e-5) -> None:
    """Same labels in the same order, probabilities equal up to float noise (batched and single
    forward passes take different kernels)."""
    assert list(got) == list(expected)
    assert got == pytest.approx(expected, abs=abs_tol)


def assert_archive_serves_like_the_checkpoint(ckpt_path: Path, name: str, samples, tmp_path: Path,
                                              net_file: str) -> None:
    """Archive a trained checkpoint with the real archiver, load it the way TorchServe's worker does
    (its own network file only, never model/), and check every sample gets a 200 with the answer
    the checkpoint's network gives in-process."""
    from ts.context import Context, RequestProcessor

    from handlers.classifier import ImageClassifier
    from handlers.torchserve_handler import TorchServeImageClassifier
    from model import checkpoint, nets

    mar, _ = archive.archive(ckpt_path, tmp_path / "serve", name)
    unpacked = tmp_path / "mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    shipped = {p.name for p in unpacked.iterdir()}
    other_nets = {a.file.name for a in nets.ARCHS.values()} - {net_file}
    assert net_file in shipped and not other_nets & shipped, shipped
    ctx = Context(name, str(unpacked), archive.read_manifest(mar), batch_size=8, gpu=None, mms_version="0.12.0")
    handler = TorchServeImageClassifier()
    handler.initialize(ctx)
    out_dir, listed = samples
    rows = [{"body": bytearray((out_dir / s["file"]).read_bytes())} for s in listed]
    ctx.request_processor = [RequestProcessor({}) for _ in rows]
    out = handler.handle(rows, ctx)
    ckpt = checkpoint.load(ckpt_path)
    spec, _ = archive.model_spec_from_checkpoint(ckpt, name, "1.0")
    reference = ImageClassifier(checkpoint.build_net(ckpt), spec)
    assert [ctx.get_response_status(i)[0] for i in range(len(rows))] == [200] * len(rows)
    for result, row in zip(out, rows, strict=True):
        assert_same_topk(result, reference.predict([bytes(row["body"])])[0])


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels` (any order)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
