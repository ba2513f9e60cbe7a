import pytest

from handlers.preprocess import PreprocessSpec
from handlers.spec import ArchSpec, ModelSpec

PRE = PreprocessSpec(height=28, width=28, channels=1, mean=(0.3,), std=(0.4,))


def spec(**kw) -> ModelSpec:
    base = dict(name="m", version="2.0", labels=("a", "b", "c"), preprocess=PRE,
                arch=ArchSpec(module="small_cnn", cls="SmallCNN", kwargs={"num_classes": 3}), topk=2)
    return ModelSpec(**{**base, **kw})


def test_model_spec_saves_and_loads_unchanged(tmp_path):
    s = spec()
    s.save(tmp_path)
    assert ModelSpec.load(tmp_path) == s


def test_model_spec_needs_labels_and_positive_topk():
    with pytest.raises(ValueError, match="labels"):
        spec(labels=())
    with pytest.raises(ValueError, match="topk"):
        spec(topk=0)
