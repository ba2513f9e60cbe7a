import pytest

from handlers.preprocess import PreprocessSpec
from handlers.spec import ArchSpec, ModelSpec, ServingPolicy

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


def test_the_serving_policy_travels_in_the_spec_and_an_older_spec_gets_the_small_model_policy(tmp_path):
    heavy = ServingPolicy(workers=1, batch_size=1, max_batch_delay_ms=0, torch_threads=0, channels_last=True)
    spec(serving=heavy).save(tmp_path)
    assert ModelSpec.load(tmp_path).serving == heavy
    older = {k: v for k, v in spec().to_dict().items() if k != "serving"}
    assert ModelSpec.from_dict(older).serving == ServingPolicy()


@pytest.mark.parametrize("bad", [dict(workers=0), dict(batch_size=0), dict(torch_threads=-1), dict(max_batch_delay_ms=-1)])
def test_a_policy_that_cannot_run_is_refused(bad):
    with pytest.raises(ValueError, match="workers and batch_size must be >= 1"):
        ServingPolicy(**bad)


def test_the_format_travels_in_the_spec_names_its_file_and_an_unknown_one_is_refused(tmp_path):
    spec(format="onnx").save(tmp_path)
    loaded = ModelSpec.load(tmp_path)
    assert loaded.format == "onnx" and loaded.network_file == "model.onnx"
    assert spec().network_file == "weights.pt"  # an older spec (no format) is eager
    with pytest.raises(ValueError, match="format must be one of eager, torchscript, onnx"):
        spec(format="tflite")
