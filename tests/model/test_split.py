"""Stratified splits and their manifests, on real Fashion-MNIST test images."""
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from model import data, split
from model.datasets_csv import load_csv

PER_CLASS = 30


@pytest.fixture(scope="module")
def folder(test_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    data.export_image_folder(test_split, root, per_class=PER_CLASS)
    return root


@pytest.mark.parametrize("n, fractions, sizes", [(10, (0.8, 0.1, 0.1), [8, 1, 1]), (7, (0.5, 0.25, 0.25), [3, 2, 2]),
                                                 (3, (0.8, 0.1, 0.1), [3, 0, 0]), (5, (0.0, 0.0, 1.0), [0, 0, 5])])
def test_allocate_sums_to_n_by_largest_remainder(n, fractions, sizes):
    assert split.allocate(n, fractions) == sizes


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="sum to 1"):
        split.stratified_split([0, 1, 0, 1], fractions, seed=0)


def test_split_is_stratified_disjoint_and_seeded(test_split):
    targets = data.labels_tensor(test_split).tolist()
    parts = split.stratified_split(targets, (0.8, 0.1, 0.1), seed=3)
    for name, per_class in zip(split.SPLITS, (800, 100, 100)):
        assert Counter(targets[i] for i in parts[name]) == {c: per_class for c in range(10)}
        assert parts[name] == sorted(parts[name])
    assert sorted(sum(parts.values(), [])) == list(range(len(targets)))
    assert split.stratified_split(targets, (0.8, 0.1, 0.1), seed=3) == parts
    assert split.stratified_split(targets, (0.8, 0.1, 0.1), seed=4)["val"] != parts["val"]


def test_manifest_round_trip_reproduces_the_folder_split(folder, tmp_path):
    ds = data.load_image_folder(folder)
    manifest = split.make_manifest(ds, (0.6, 0.2, 0.2), seed=7, source={"image_folder": str(folder)})
    path = split.write_manifest(manifest, tmp_path / "m.json")
    back = split.read_manifest(path)
    assert back == manifest and back["seed"] == 7 and back["classes"] == ds.classes
    assert back["fractions"] == {"train": 0.6, "val": 0.2, "test": 0.2}
    assert back["counts"]["val"] == {c: 6 for c in ds.classes}
    views = split.apply_manifest(data.load_image_folder(folder), back)
    for name in split.SPLITS:
        ids = data.item_ids(views[name])
        assert ids == back["splits"][name] and all(isinstance(i, str) for i in ids)
        assert [views[name].classes[t] for t in views[name].targets] == [i.split("/")[0] for i in ids]
    assert len(views["train"]) == 18 * 10 and views["train"][0][0].size == (28, 28)


def test_manifest_finds_items_by_path_whatever_the_csv_order(folder, tmp_path):
    rows = [f"{p.relative_to(folder).as_posix()},{p.parent.name}\n" for p in sorted(folder.rglob("*.png"))]
    (tmp_path / "a.csv").write_text("path,label\n" + "".join(rows))
    manifest = split.make_manifest(load_csv(tmp_path / "a.csv", root=folder), (0.5, 0.25, 0.25), seed=1)
    random.Random(0).shuffle(rows)
    (tmp_path / "b.csv").write_text("path,label\n" + "".join(rows))
    shuffled = load_csv(tmp_path / "b.csv", root=folder)
    views = split.apply_manifest(shuffled, manifest)
    for name in split.SPLITS:
        assert data.item_ids(views[name]) == manifest["splits"][name]
    assert data.item_ids(views["test"]) != [i for i in data.item_ids(shuffled) if i in set(manifest["splits"]["test"])]


def test_torchvision_manifests_name_original_indices(test_split):
    view = data.select_classes(test_split, ["Bag", "Coat"])
    manifest = split.make_manifest(view, (0.5, 0.5, 0.0), seed=0)
    train = manifest["splits"]["train"]
    assert len(train) == 1000 and manifest["splits"]["test"] == []
    assert {test_split.classes[test_split.targets[i]] for i in train} == {"Bag", "Coat"}
    again = split.apply_manifest(data.select_classes(test_split, ["Bag", "Coat"]), manifest)["train"]
    assert data.item_ids(again) == train and again.classes == ["Bag", "Coat"]


def test_apply_refuses_other_classes_and_missing_items(folder):
    ds = data.load_image_folder(folder)
    manifest = split.make_manifest(ds, (0.8, 0.1, 0.1), seed=0)
    with pytest.raises(ValueError, match="select the same classes"):
        split.apply_manifest(data.select_classes(ds, ["bag", "coat"]), manifest)
    manifest["splits"]["val"].append("bag/99999.png")
    with pytest.raises(ValueError, match=r"1 items of the manifest are not in the dataset.*99999"):
        split.apply_manifest(ds, manifest)


def test_read_manifest_refuses_other_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"seed": 0, "splits": {}}))
    with pytest.raises(ValueError, match="not a split manifest"):
        split.read_manifest(tmp_path / "x.json")


def test_cli_writes_the_same_manifest_for_the_same_seed(folder, tmp_path, capsys):
    args = ["--image-folder", str(folder), "--classes", "sneaker", "bag", "--fractions", "0.5", "0.3", "0.2"]
    first = split.main(args + ["--seed", "5", "--output", str(tmp_path / "a.json")])
    split.main(args + ["--seed", "5", "--output", str(tmp_path / "b.json")])
    split.main(args + ["--seed", "6", "--output", str(tmp_path / "c.json")])
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "c.json").read_text())["splits"] != first["splits"]
    assert first["classes"] == ["sneaker", "bag"]
    assert first["source"] == {"image_folder": str(folder), "classes": ["sneaker", "bag"]}
    assert [len(first["splits"][s]) for s in split.SPLITS] == [30, 18, 12]
    assert "60 items of 2 classes → train 30, val 18, test 12" in capsys.readouterr().out


def test_cli_on_a_csv_writes_the_cleaning_report(folder, tmp_path):
    (tmp_path / "l.csv").write_text("path,label\nbag/nope.png,bag\n" + "".join(
        f"{p.relative_to(folder).as_posix()},{p.parent.name}\n" for p in sorted(folder.glob("bag/*.png"))))
    manifest = split.main(["--csv", str(tmp_path / "l.csv"), "--csv-root", str(folder), "--clean-report",
                           str(tmp_path / "r.json"), "--output", str(tmp_path / "m.json")])
    assert sum(len(v) for v in manifest["splits"].values()) == PER_CLASS
    assert json.loads((tmp_path / "r.json").read_text())["counts"] == {"missing_file": 1}


@pytest.mark.parametrize("argv, message", [
    (["--output", "m.json"], "name a data source"),
    (["--image-folder", "nowhere", "--output", "m.json"], "does not exist"),
    (["--dataset", "mnist", "--image-folder", "x", "--output", "m.json"], "not allowed with argument"),
    (["--image-folder", ".", "--fractions", "0.9", "0.9", "0.1", "--output", "m.json"], "sum to 1"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        split.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.integration
def test_cli_runs_as_a_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "model.split", "--image-folder", str(tmp_path / "none"),
                           "--output", str(tmp_path / "m.json")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and "image folder" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "m.json").exists()
