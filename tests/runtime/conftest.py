"""Fixtures of the KServe-native runtime's tests: one real runtime process over the session's two
real `.mar` files, shared by every module here (kserve's SDK clients, Triton's), and the same
archives loaded in-process to compare with."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from handlers.classifier import ImageClassifier
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from tests.helpers import IMAGENET_NAME, MODEL_NAME


def Runtime(model_store: Path, run_dir: Path) -> KServeRuntime:
    return KServeRuntime(model_store, run_dir, *free_ports(2))


@pytest.fixture(scope="session")
def runtime(store, tmp_path_factory):
    rt = Runtime(store / "model-store", tmp_path_factory.mktemp("kserve-run")).start()
    yield rt
    rt.stop()
    assert rt.proc.returncode is not None


@pytest.fixture(scope="session")
def local(store, tmp_path_factory) -> dict[str, ImageClassifier]:
    """Each archive loaded in-process, the way TorchServe's worker loads it."""
    out = {}
    for name in (MODEL_NAME, IMAGENET_NAME):
        target = tmp_path_factory.mktemp(f"local-{name}")
        with zipfile.ZipFile(store / "model-store" / f"{name}.mar") as z:
            z.extractall(target)
        out[name] = ImageClassifier.load(target)
    return out

