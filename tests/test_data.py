import gzip
import json

import numpy as np
import pytest
from PIL import Image

from model import data


def test_fashion_mnist_loads_through_torchvision_from_the_debian_files(test_split):
    assert len(test_split) == 10000 and len(test_split.classes) == 10
    img, label = test_split[0]
    assert img.size == (28, 28) and img.mode == "L" and test_split.classes[label] == "Ankle boot"


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFound, match="dataset-fashion-mnist"):
        data.ensure_fashion_mnist(tmp_path / "data", source=tmp_path / "nowhere")


def test_ensure_unpacks_only_what_is_missing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in data.IDX_FILES:
        with gzip.open(src / f"{name}.gz", "wb") as f:
            f.write(name.encode())
    raw = data.ensure_fashion_mnist(tmp_path / "d", source=src)
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.IDX_FILES)
    assert (raw / data.IDX_FILES[0]).read_bytes() == data.IDX_FILES[0].encode()
    (src / f"{data.IDX_FILES[0]}.gz").unlink()  # already unpacked: the source is not needed again
    assert data.ensure_fashion_mnist(tmp_path / "d", source=src) == raw


def test_unknown_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet-22k", tmp_path, train=False)


def test_export_samples_writes_real_test_images_with_their_labels(samples, test_split):
    out, listed = samples
    assert sorted(s["label"] for s in listed) == sorted(test_split.classes)
    assert json.loads((out / "samples.json").read_text()) == listed
    for s in listed:
        img, target = test_split[s["index"]]
        assert test_split.classes[target] == s["label"]
        assert np.array_equal(np.array(Image.open(out / s["file"])), np.array(img))
