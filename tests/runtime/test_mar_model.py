"""scripts/runtime/model.py in-process: the archive's serving policy sets the runtime's batching,
threads and memory format, and the model is loaded, warmed up and run on its batch thread (one
OpenMP pool, the one its passes use)."""
import asyncio
import threading

import pytest
from PIL import Image
from skimage import data as skdata

from handlers.accel import usable_cpus
from handlers.classifier import ImageClassifier
from scripts.runtime.model import INLINE_BELOW_MS, MarModel
from scripts.serve import policy
from tests.helpers import IMAGENET_NAME, MODEL_NAME, png_bytes


@pytest.fixture
def loaded(store, tmp_path, monkeypatch):
    """Load a model of the store, noting the thread each ImageClassifier.load ran on."""
    loaded_on, models = [], []
    real = ImageClassifier.load.__func__

    def load(cls, *args, **kwargs):
        loaded_on.append(threading.get_ident())
        return real(cls, *args, **kwargs)
    monkeypatch.setattr(ImageClassifier, "load", classmethod(load))

    def make(name: str) -> MarModel:
        model = MarModel(store / "model-store" / f"{name}.mar", tmp_path, device="cpu", inline_below_ms=INLINE_BELOW_MS)
        assert model.load()
        models.append(model)
        return model
    yield make, loaded_on
    for model in models:
        model.stop()


def run_on_batcher(model: MarModel, image: bytes) -> tuple[dict, list[int]]:
    ran_on, run = [], model.batcher.run

    def traced(items):
        ran_on.append(threading.get_ident())
        return run(items)
    model.batcher.run = traced
    [result] = asyncio.run(model.batcher.submit([(image, None, None)]))
    return result, ran_on


def test_a_heavy_model_is_served_one_image_per_pass_on_every_cpu_from_its_own_thread(loaded):
    make, loaded_on = loaded
    model = make(IMAGENET_NAME)
    assert model.classifier.spec.serving == policy.HEAVY
    assert (model.batcher.workers, model.batcher.max_items) == (1, 1)
    assert (model.classifier.options.torch_threads, model.classifier.options.channels_last) == (usable_cpus(), True)
    worker = model.batcher.on_worker(0, threading.get_ident)
    assert loaded_on == [worker] != [threading.get_ident()]
    result, ran_on = run_on_batcher(model, png_bytes(Image.fromarray(skdata.chelsea())))
    assert ran_on == [worker] and "Egyptian cat" in list(result)[:2]
    # more than one thread per pass: never on the event loop, whose thread would start a second pool
    assert model.batcher.inline_below_s == (INLINE_BELOW_MS / 1000 if usable_cpus() == 1 else 0.0)


def test_a_light_model_batches_up_to_eight_and_may_run_on_the_loop(loaded):
    make, _ = loaded
    model = make(MODEL_NAME)
    assert model.classifier.spec.serving == policy.LIGHT
    assert (model.batcher.workers, model.batcher.max_items, model.batcher.inline_below_s) == (1, 8, INLINE_BELOW_MS / 1000)
    assert (model.classifier.options.torch_threads, model.classifier.options.channels_last) == (1, False)
