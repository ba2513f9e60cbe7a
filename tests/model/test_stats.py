"""Channel statistics: the published Fashion-MNIST numbers, and synthetic images with known answers."""
import json

import numpy as np
import pytest
from PIL import Image

from model import data, split, stats


def test_fashion_mnist_training_images_give_the_preset_constants(data_dir, tmp_path, capsys):
    result = stats.main(["--dataset", "fashion-mnist", "--data-dir", str(data_dir),
                         "--output", str(tmp_path / "s.json")])
    spec = data.DATASETS["fashion-mnist"].spec
    assert result["images"] == 60000 and result["pixels"] == 60000 * 28 * 28 and result["channels"] == 1
    assert result["mean"][0] == pytest.approx(spec.mean[0], abs=1e-4)
    assert result["std"][0] == pytest.approx(spec.std[0], abs=1e-4)
    assert json.loads((tmp_path / "s.json").read_text()) == result
    assert result["source"] == {"dataset": "fashion-mnist", "part": "train"}
    assert "mean (0.2860,) std (0.3530,) over 60000 images" in capsys.readouterr().out


def save(root, cls, name, img):
    (root / cls).mkdir(parents=True, exist_ok=True)
    img.save(root / cls / name)


@pytest.fixture
def rgb_folder(tmp_path):
    """a/: 4x4 of (255, 0, 51); b/: 2x2 of (0, 0, 51) → per pixel: R is 1 on 16 of 20 pixels."""
    save(tmp_path, "a", "big.png", Image.new("RGB", (4, 4), (255, 0, 51)))
    save(tmp_path, "b", "small.png", Image.new("RGB", (2, 2), (0, 0, 51)))
    return tmp_path


def test_known_answer_weights_every_pixel_and_keeps_channels_apart(rgb_folder):
    result = stats.main(["--image-folder", str(rgb_folder)])
    assert (result["images"], result["pixels"], result["channels"]) == (2, 20, 3)
    assert result["mean"] == pytest.approx([0.8, 0.0, 0.2], abs=1e-6)
    assert result["std"] == pytest.approx([0.4, 0.0, 0.0], abs=1e-6)  # sqrt(0.8 - 0.8²)


def test_limit_uses_only_the_first_images(rgb_folder):
    result = stats.main(["--image-folder", str(rgb_folder), "--limit", "1"])
    assert result["images"] == 1 and result["mean"] == pytest.approx([1.0, 0.0, 0.2], abs=1e-6)


def test_gray_images_give_one_channel_unless_asked_for_three(tmp_path):
    pixels = np.array([[0, 255], [255, 255]], dtype=np.uint8)  # mean 0.75, std sqrt(0.75 - 0.5625)
    images = [Image.fromarray(pixels), Image.fromarray(pixels)]
    one = stats.channel_stats(iter(images))
    assert one["channels"] == 1 and one["mean"] == pytest.approx([0.75]) and one["std"] == pytest.approx([0.433013])
    three = stats.channel_stats(iter(images), channels=3)
    assert three["mean"] == pytest.approx([0.75] * 3) and three["std"] == pytest.approx([0.433013] * 3)


def test_matches_numpy_on_random_images_of_mixed_modes():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(5, 7), (16, 3), (9, 9)]]
    images = [Image.fromarray(arrays[0]), Image.fromarray(arrays[1]).convert("RGBA"), Image.fromarray(arrays[2])]
    result = stats.channel_stats(images)
    flat = np.concatenate([a.reshape(-1, 3) for a in arrays]) / 255.0
    assert result["mean"] == pytest.approx(flat.mean(0).tolist(), abs=1e-6)
    assert result["std"] == pytest.approx(flat.std(0).tolist(), abs=1e-6)


def test_manifest_restricts_to_the_train_items(tmp_path):
    for k in range(4):
        save(tmp_path / "imgs", "a", f"{k}.png", Image.new("L", (2, 2), 60 * k))
    manifest = split.make_manifest(data.load_image_folder(tmp_path / "imgs"), (0.5, 0.5, 0.0), seed=0)
    split.write_manifest(manifest, tmp_path / "m.json")
    result = stats.main(["--image-folder", str(tmp_path / "imgs"), "--manifest", str(tmp_path / "m.json")])
    expected = [60 * int(p.split("/")[1][0]) / 255 for p in manifest["splits"]["train"]]
    assert result["images"] == 2 and result["mean"] == pytest.approx([np.mean(expected)], abs=1e-6)
    assert result["source"]["manifest"] == str(tmp_path / "m.json")


@pytest.mark.parametrize("argv, message", [(["--image-folder", "nowhere"], "does not exist"),
                                           (["--image-folder", ".", "--limit", "0"], "--limit"),
                                           (["--dataset", "cifar-10", "--data-dir", "nowhere"], "--download")])
def test_cli_errors_are_clear(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        stats.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
