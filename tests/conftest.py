"""Fixtures shared by every area (helpers are in helpers.py). They build real objects: the real
Fashion-MNIST test split (Debian package), real PNG samples, a checkpoint trained by the real
training CLI, a `.mar` built by the real archiver, and a real TorchServe on free loopback ports."""
from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from model import data, imagenet, train
from scripts.serve import archive
from scripts.serve.settings import DEFAULT_MODEL, loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import IMAGENET_NAME, MODEL_NAME, png_bytes, written_since


# An integration test needs more than this process: a server, a real tool (the model archiver,
# helm, checkov, promtool, shellcheck, podman, a control plane), a trained network or a command
# line run as a subprocess. Tests that use a fixture built that way are marked here; modules mark
# the rest. `pytest -m "not integration"` is then in-process only, and the guard below fails a
# unit test that starts a process, so a missing mark cannot hide.
BUILT_OUT_OF_PROCESS = {"trained", "store", "unpacked_mar", "manifest", "torchserve"}


def pytest_collection_modifyitems(items):
    for item in items:
        if BUILT_OUT_OF_PROCESS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


class UnitTestStartedAProcess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_process_in_unit_tests(request, monkeypatch):
    if request.node.get_closest_marker("integration"):
        return

    def refuse(self, args, *a, **kw):
        raise UnitTestStartedAProcess(f"{request.node.nodeid} started {args!r}: mark it integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Training runs in tests track into a temporary MLflow store, never ./mlruns."""
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


REPO = Path(__file__).resolve().parents[1]
# State the tools keep between runs, the same whether `make` or a test starts them: the node's
# containerd (its content store holds the images `make test` imported; config, socket and log are
# rewritten at each start) and podman's generated settings.
TOOL_STATE = ("build/cluster/", "build/containers/")


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_source_tree():
    """Tests write into temporary folders only: a file the run creates in the repository (an
    artifact, a generated file, a default --out) or a recorded result it overwrites in docs/
    fails the session. Edits to tracked source files during a run are a developer's, not checked."""
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    t0 = time.time()
    yield
    asked = {"docs/ui-screenshot.png"} if os.environ.get("UPDATE_UI_SCREENSHOT") == "1" else set()
    written = [f for f in written_since(REPO, t0)
               if (f not in tracked or f.startswith("docs/")) and f not in asked and not f.startswith(TOOL_STATE)]
    assert not written, f"the tests wrote into the source tree: {written[:20]}"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where tests leave what people look at (screenshots, the controller's differences): the
    folder $TEST_ARTIFACTS names, else pytest's temporary folder; never the source tree."""
    path = Path(os.environ.get("TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


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
def images(samples) -> list[bytes]:
    """The samples' bytes, as clients send them."""
    out_dir, listed = samples
    return [(out_dir / s["file"]).read_bytes() for s in listed]


@pytest.fixture(scope="session")
def chelsea() -> bytes:
    """A real photo (scikit-image's cat) as a PNG."""
    return png_bytes(Image.fromarray(skdata.chelsea()))


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
