import torch

from handlers.classifier import ImageClassifier
from handlers.preprocess import bytes_to_tensor, normalize
from model import presets
from model.presets import DATASET_SPECS

SPEC = DATASET_SPECS["fashion-mnist"]


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
    x = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 1, 3, 4)
    out = presets.train_augment(x, pad=0, flip=True, generator=torch.Generator().manual_seed(3))
    for a, b in zip(out, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
