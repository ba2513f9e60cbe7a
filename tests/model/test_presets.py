import torch

from handlers.classifier import ImageClassifier
from handlers.preprocess import bytes_to_tensor, normalize
from model import data, presets

SPEC = data.DATASETS["fashion-mnist"].spec


def test_training_eval_preset_equals_serving_preprocessing_on_real_images(samples, test_split, unpacked_mar):
    """The tensor training evaluates on is bit-identical to what the served handler computes from
    the PNG bytes a client sends, for real test images."""
    out, listed = samples
    served = ImageClassifier.load(unpacked_mar)
    assert served.spec.preprocess == SPEC
    for s in listed:
        pil = test_split[s["index"]][0]
        training = presets.eval_transform(pil, SPEC)
        # the batched path that training and evaluation use gives the same tensor
        assert torch.equal(normalize(presets.images_to_uint8([pil], SPEC), SPEC)[0], training)
        body = (out / s["file"]).read_bytes()
        assert torch.equal(bytes_to_tensor(body, SPEC), training)
        assert torch.equal(served.preprocess(body), training)


def test_train_augment_keeps_shape_and_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)
    out = presets.train_augment(x, pad=2, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert not torch.equal(out, x)
    same = presets.train_augment(x, pad=0, flip=False)
    assert torch.equal(same, x)


def test_train_augment_flip_only_mirrors_images():
    """Each image comes back as itself or its exact mirror, and both happen (p = 0.5 over 16
    images): a flip that never fires, or mangles the pixels, fails."""
    x = torch.arange(16 * 3 * 4, dtype=torch.uint8).reshape(16, 1, 3, 4)  # no image is its own mirror
    out = presets.train_augment(x, pad=0, flip=True, generator=torch.Generator().manual_seed(3))
    kept = [torch.equal(a, b) for a, b in zip(out, x, strict=True)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(out, x, strict=True)]
    assert all(k != m for k, m in zip(kept, mirrored, strict=True))  # exactly one of the two, per image
    assert any(kept) and any(mirrored), kept
    assert torch.equal(presets.train_augment(x, pad=0, flip=False), x)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_fashion_mnist_preset_is_the_cpu_recipes_shift_and_flip_exactly():
    """`--augment` on Fashion-MNIST must stay what docs/results.md measured: bit-identical."""
    x = torch.randint(0, 255, (32, 1, 28, 28), dtype=torch.uint8)
    got = data.DATASETS["fashion-mnist"].augment(x, SPEC, _gen(5))
    assert torch.equal(got, presets.train_augment(x, pad=2, flip=True, generator=_gen(5)))


def test_affine_path_without_crop_or_angle_keeps_pixels_and_flips_whole_images():
    x = torch.randint(0, 255, (8, 3, 20, 24), dtype=torch.uint8)
    same = presets._affine(x, presets.TrainPreset(rotation=1e-9), _gen())
    assert torch.equal(same, x)
    flipped = presets._affine(x, presets.TrainPreset(rotation=1e-9, flip=True), _gen(1))
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x))
    assert any(torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(flipped, x))


def test_rotation_turns_an_image_and_keeps_its_centre():
    x = torch.zeros(1, 1, 29, 29, dtype=torch.uint8)
    x[0, 0, 14, 4:25] = 255  # a horizontal bar through the centre
    p = presets.TrainPreset(rotation=90)
    for seed in range(20):
        out = p(x, SPEC, _gen(seed))
        assert out[0, 0, 14, 14] == 255
        if out[0, 0, 14, 4] == 0 and out[0, 0, 14, 24] == 0:  # a large angle: the bar left the row
            return
    raise AssertionError("no rotation of more than ~15° in 20 draws of ±90°")


def test_random_resized_crop_zooms_in():
    """Crops of 25-100% of the area, resized back, make a checkerboard's squares larger."""
    board = ((torch.arange(32)[:, None] // 4 + torch.arange(32)[None] // 4) % 2 * 255).to(torch.uint8)
    x = board.expand(32, 1, 32, 32).contiguous()
    out = presets._affine(x, presets.TrainPreset(crop_scale=0.25), _gen())
    def edges(t):  # black/white transitions along rows
        b = t > 127
        return (b[..., 1:] != b[..., :-1]).float().mean()

    assert out.shape == x.shape and edges(out) < 0.9 * edges(x)  # expected ≈ 0.79 (√ of the mean area)


def test_color_jitter_stays_in_range_and_changes_intensity_not_shape():
    x = torch.randint(30, 220, (16, 3, 8, 8), dtype=torch.uint8)
    out = presets.TrainPreset(jitter=0.4)(x, data.DATASETS["cifar-10"].spec, _gen())
    assert out.dtype == torch.uint8 and out.shape == x.shape and not torch.equal(out, x)
    assert (out.float().mean(dim=(1, 2, 3)) - x.float().mean(dim=(1, 2, 3))).abs().max() > 2
    gray = torch.full((2, 1, 4, 4), 100, dtype=torch.uint8)
    bright = presets.TrainPreset(jitter=0.5)(gray, SPEC, _gen())
    assert all(len(img.unique()) == 1 for img in bright)  # a flat image stays flat


def test_random_erasing_fills_one_rectangle_with_the_mean():
    x = torch.full((64, 1, 28, 28), 255, dtype=torch.uint8)
    out = presets.TrainPreset(erasing=0.5)(x, SPEC, _gen())
    fill = round(SPEC.mean[0] * 255)
    erased = [(img == fill) for img in out[:, 0]]
    count = sum(bool(e.any()) for e in erased)
    assert 16 < count < 48  # p = 0.5 over 64 images
    for e in erased:
        if e.any():
            rows, cols = e.any(1).nonzero().flatten(), e.any(0).nonzero().flatten()
            box = e[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all() and e.sum() == box.numel()  # one solid rectangle
            assert 0.02 * 784 * 0.5 <= e.sum() <= 0.33 * 784 * 1.5
    assert torch.equal(presets.TrainPreset(erasing=0.0)(x, SPEC, _gen()), x)
