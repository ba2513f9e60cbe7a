"""The CSV source: real Fashion-MNIST test images plus planted bad rows, each dropped and reported."""
import csv
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import data
from model.datasets_csv import CleanReport, inspect_image, load_csv

GOOD_PER_CLASS = 4


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def stripped(planted: dict) -> dict:
    return {(path, label.strip()): reason for (path, label), reason in planted.items()}


def corrupt_pixels(png_bytes: bytes) -> bytes:
    """Garble the compressed pixel data but fix the chunk's CRC: only a full decode notices."""
    d = bytearray(png_bytes)
    at = d.index(b"IDAT")
    n = struct.unpack(">I", d[at - 4:at])[0]
    d[at + 14:at + 24] = b"\xff" * 10
    d[at + 4 + n:at + 8 + n] = struct.pack(">I", zlib.crc32(bytes(d[at:at + 4 + n])))
    return bytes(d)


@pytest.fixture(scope="module")
def case(test_split, tmp_path_factory):
    """root/images.csv: 40 real images (4 per class) and planted bad rows, in file order."""
    root = tmp_path_factory.mktemp("csvdata")
    written = data.export_image_folder(test_split, root / "imgs", per_class=GOOD_PER_CLASS)
    good = [(f"imgs/{rel}", test_split.classes[test_split[i][1]], i) for rel, i in written]
    real = png(test_split[5000][0])
    (root / "bad").mkdir()
    (root / "bad" / "truncated.png").write_bytes(real[:len(real) // 2])
    (root / "bad" / "no-end.png").write_bytes(real[:-12])  # IEND chunk cut: pixels decode, file is cut
    (root / "bad" / "garbled.png").write_bytes(corrupt_pixels(real))  # checksums fine, pixels not
    jpeg = png(test_split[5001][0].convert("RGB"), "JPEG")
    (root / "bad" / "truncated.jpg").write_bytes(jpeg[:len(jpeg) * 2 // 3])
    (root / "bad" / "notes.png").write_text("this is a text file, not an image\n")
    (root / "bad" / "unlabelled.png").write_bytes(png(test_split[5002][0]))
    (root / "bad" / "blank-label.png").write_bytes(png(test_split[5003][0]))
    shutil.copyfile(root / good[3][0], root / "bad" / "copy.png")
    planted = {  # path, label as written → the reason it must be dropped for
        ("bad/unlabelled.png", ""): "missing_label",
        ("bad/blank-label.png", "   "): "missing_label",
        ("imgs/no-such-file.png", "Bag"): "missing_file",
        ("", "Bag"): "missing_path",
        ("bad/truncated.png", "Bag"): "truncated_or_corrupt",
        ("bad/no-end.png", "Bag"): "truncated_or_corrupt",
        ("bad/garbled.png", "Bag"): "truncated_or_corrupt",
        ("bad/truncated.jpg", "Bag"): "truncated_or_corrupt",
        ("bad/notes.png", "Bag"): "not_an_image",
        ("bad/copy.png", "Coat"): "duplicate",        # same bytes as good[3], listed after it
        (good[7][0], good[7][1]): "duplicate",        # the same file listed twice
    }
    rows = [(p, label) for p, label, _ in good[:20]] + list(planted) + [(p, label) for p, label, _ in good[20:]]
    with open(root / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return root, good, planted


def test_every_planted_bad_row_is_dropped_with_its_reason(case, tmp_path):
    root, good, planted = case
    ds = load_csv(root / "images.csv", report=tmp_path / "report.json")
    rep = ds.report
    assert (rep.rows, rep.kept, len(rep.dropped)) == (len(good) + len(planted), len(good), len(planted))
    assert {(d.path, d.label): d.reason for d in rep.dropped} == stripped(planted)
    assert rep.counts() == {"missing_label": 2, "missing_file": 1, "missing_path": 1,
                            "truncated_or_corrupt": 4, "not_an_image": 1, "duplicate": 2}
    lines = {(d.path, d.label): d.line for d in rep.dropped}
    assert lines[("bad/unlabelled.png", "")] == 22  # header is line 1, then 20 good rows
    copy = next(d for d in rep.dropped if d.path == "bad/copy.png")
    assert copy.detail == f"same bytes as line 5 ({good[3][0]}, label {good[3][1]})"  # the first is kept
    details = {d.path: d.detail.lower() for d in rep.dropped}
    assert "truncated" in details["bad/truncated.jpg"] and "truncated" in details["bad/truncated.png"]
    assert "broken data stream" in details["bad/garbled.png"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == rep.to_dict() and on_disk["dropped_count"] == len(planted)
    assert rep.summary().endswith("kept 40 of 51 rows; dropped 11 (duplicate 2, missing_file 1, missing_label 2, "
                                  "missing_path 1, not_an_image 1, truncated_or_corrupt 4)")


def test_the_kept_rows_are_the_real_images_with_their_labels(case, test_split):
    root, good, _ = case
    ds = load_csv(root / "images.csv")
    assert ds.classes == sorted(test_split.classes) and len(ds) == len(good)
    assert data.item_ids(ds) == [p for p, _, _ in good]
    for k, (path, label, index) in enumerate(good):
        img, target = ds[k]
        assert ds.classes[target] == label
        assert np.array_equal(np.array(img), np.array(test_split[index][0]))


def test_report_as_csv_lists_each_dropped_row(case, tmp_path):
    root, _, planted = case
    load_csv(root / "images.csv", report=tmp_path / "dropped.csv")
    with open(tmp_path / "dropped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["path"], r["label"]): r["reason"] for r in rows} == stripped(planted)
    assert all(int(r["line"]) > 1 for r in rows)


def test_given_classes_fix_the_order_and_drop_other_labels(case):
    root, good, planted = case
    ds = load_csv(root / "images.csv", classes=["Sneaker", "Bag"])
    assert ds.classes == ["Sneaker", "Bag"] and len(ds) == 2 * GOOD_PER_CLASS
    others = [label for _, label, _ in good] + [label for _, label in planted if label.strip()]
    assert ds.report.counts()["unknown_label"] == sum(label not in ("Sneaker", "Bag") for label in others)
    assert [ds.classes[t] for t in ds.targets] == [label for _, label, _ in good if label in ("Sneaker", "Bag")]


def test_paths_can_start_from_another_root(case, tmp_path):
    root, good, _ = case
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label, _ in good[:3]))
    assert len(load_csv(tmp_path / "list.csv", root=root)) == 3
    with pytest.raises(ValueError, match="no usable rows"):
        load_csv(tmp_path / "list.csv")  # relative to the CSV's own folder: no such files


def test_bad_csv_files_are_clear_errors(tmp_path):
    with pytest.raises(data.DatasetNotFound, match="does not exist"):
        load_csv(tmp_path / "missing.csv")
    (tmp_path / "x.csv").write_text("file,class\na.png,cat\n")
    with pytest.raises(ValueError, match="must name the columns 'path' and 'label'"):
        load_csv(tmp_path / "x.csv")


def test_inspect_image_accepts_real_images_of_any_format(test_split):
    img = test_split[0][0]
    for fmt, im in [("PNG", img), ("JPEG", img.convert("RGB")), ("BMP", img), ("WEBP", img.convert("RGB"))]:
        assert inspect_image(png(im, fmt)) is None, fmt
    assert inspect_image(b"")[0] == "not_an_image"


def test_report_summary_without_drops():
    assert CleanReport(csv="a.csv", rows=3, kept=3).summary() == "a.csv: kept 3 of 3 rows"


def test_paths_outside_the_root_are_read_as_written(case, test_split, tmp_path):
    """Relative paths start at the root, `..` included, so they may leave it; absolute paths are
    used as they are, whatever the root. Each row is still checked like any other (missing file,
    duplicate bytes), and the ids and the report keep the path as the CSV wrote it."""
    root, good, _ = case
    lists = tmp_path / "lists"  # the CSV's folder, the default root: none of the images is under it
    lists.mkdir()
    absolute = str(root / good[0][0])
    upward = os.path.relpath(root / good[1][0], lists)
    assert upward.startswith("..") and not Path(absolute).is_relative_to(lists)
    rows = [(absolute, good[0][1]), (upward, good[1][1]),
            (os.path.relpath(root / good[0][0], lists), good[0][1]),  # good[0] again, by another path
            ("../nowhere/x.png", "Bag"), (str(tmp_path / "nowhere" / "y.png"), "Bag")]
    (lists / "l.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    for given_root in (None, tmp_path / "a" / "b" / "c"):  # absolute paths ignore the root
        ds = load_csv(lists / "l.csv", root=given_root)
        if given_root is None:
            assert data.item_ids(ds) == [absolute, upward]
            for k, index in enumerate((good[0][2], good[1][2])):
                assert np.array_equal(np.array(ds[k][0]), np.array(test_split[index][0]))
                assert ds.classes[ds.targets[k]] == rows[k][1]
            dropped = {(d.path, d.reason, d.detail) for d in ds.report.dropped}
            assert dropped == {(rows[2][0], "duplicate", f"same bytes as line 2 ({absolute}, label {good[0][1]})"),
                               ("../nowhere/x.png", "missing_file", str(lists / "../nowhere/x.png")),
                               (rows[4][0], "missing_file", rows[4][0])}
        else:  # relative rows now start in a/b/c, from where they lead nowhere
            assert data.item_ids(ds) == [absolute]
            assert ds.report.counts() == {"missing_file": 4}
