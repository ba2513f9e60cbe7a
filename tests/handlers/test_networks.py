"""Loading the network in each format an archive may carry, the way both runtimes load it."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from handlers.accel import AccelError, InferenceOptions
from handlers.networks import OnnxNetwork, load_network
from handlers.preprocess import PreprocessSpec
from handlers.spec import ArchSpec, ModelSpec
from model import export, nets

PRE = PreprocessSpec(height=28, width=28, channels=1, mean=(0.3,), std=(0.4,))
KWARGS = {"num_classes": 4, "in_channels": 1, "width": 8}


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return nets.build("small_cnn", **KWARGS).eval()


def staged(net, fmt: str, directory, calibration: torch.Tensor | None = None):
    """A model directory as an unpacked archive holds it, in `fmt`."""
    spec = ModelSpec(name="m", version="1", labels=tuple("abcd"), preprocess=PRE, format=fmt,
                     arch=ArchSpec(module="small_cnn", cls="SmallCNN", kwargs=KWARGS))
    if fmt == "eager":
        torch.save(net.state_dict(), directory / spec.network_file)
        (directory / "small_cnn.py").write_text(nets.ARCHS["small_cnn"].file.read_text())
    else:
        export.export_network(net, PRE, fmt, directory / spec.network_file, calibration)
    return spec


@pytest.mark.parametrize("fmt", ["eager", "torchscript", "onnx"])
def test_every_format_loads_to_the_same_logits_for_any_batch_size(net, fmt, tmp_path):
    spec = staged(net, fmt, tmp_path)
    loaded = load_network(tmp_path, spec, InferenceOptions(device="cpu").resolve(spec.serving))
    assert isinstance(loaded, OnnxNetwork) == (fmt == "onnx")
    for n in (1, 3, 17):  # the batch dimension is dynamic in every export
        x = torch.randn(n, 1, 28, 28)
        with torch.inference_mode():
            assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_an_int8_archive_loads_into_onnx_runtime_with_answers_independent_of_the_batch(net, tmp_path):
    """int8's activation scales are fixed at calibration: an image gets the same logits alone or
    in any batch (the runtimes batch requests), close to the fp32 network's."""
    calibration = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    spec = staged(net, "onnx-int8", tmp_path, calibration)
    loaded = load_network(tmp_path, spec, InferenceOptions(device="cpu").resolve(spec.serving))
    assert isinstance(loaded, OnnxNetwork) and spec.network_file == "model.int8.onnx"
    x = calibration[:17]
    with torch.inference_mode():
        batched = loaded(x)
        alone = torch.cat([loaded(x[i:i + 1]) for i in range(len(x))])
        assert torch.allclose(batched, alone, atol=1e-5)
        assert torch.allclose(torch.softmax(batched, 1), torch.softmax(net(x), 1), atol=export.INT8_TOLERANCE)


def test_an_onnx_session_takes_the_resolved_thread_count(net, tmp_path):
    spec = staged(net, "onnx", tmp_path)
    options = InferenceOptions(device="cpu", torch_threads=3).resolve(spec.serving)
    session = load_network(tmp_path, spec, options).session
    assert session.get_session_options().intra_op_num_threads == 3


@pytest.mark.parametrize("change, named", [({"dtype": torch.float16}, "float16"), ({"compile": True}, "compiled"),
                                           ({"device": torch.device("cuda")}, "cuda")])
def test_an_onnx_archive_refuses_what_onnx_runtime_here_cannot_do(net, tmp_path, change, named):
    """fp16, torch.compile and a GPU are eager paths: asking for them with an ONNX archive is an
    error that names the choice, never a silent fp32 CPU run (the GPU is a stand-in here: no
    device is built, only the resolved option)."""
    spec = staged(net, "onnx", tmp_path)
    options = dataclasses.replace(InferenceOptions(device="cpu").resolve(spec.serving), **change)
    with pytest.raises(AccelError, match=named):
        load_network(tmp_path, spec, options)


def test_a_torchscript_archive_refuses_torch_compile(net, tmp_path):
    spec = staged(net, "torchscript", tmp_path)
    with pytest.raises(AccelError, match="TorchScript"):
        load_network(tmp_path, spec, InferenceOptions(device="cpu", compile=True).resolve(spec.serving))


def test_an_onnx_classifier_leaves_the_threads_to_onnx_runtime(net, tmp_path):
    """The policy's threads go to ONNX Runtime's session; torch (normalizing only) keeps one on the
    loading thread, so no second OpenMP pool competes with an eager model's in the same process."""
    from concurrent.futures import ThreadPoolExecutor

    from handlers.accel import usable_cpus
    from handlers.classifier import ImageClassifier
    from handlers.spec import ServingPolicy

    spec = dataclasses.replace(staged(net, "onnx", tmp_path), serving=ServingPolicy(batch_size=1, torch_threads=0))
    options = InferenceOptions(device="cpu")

    def load():
        clf = ImageClassifier(load_network(tmp_path, spec, options.resolve(spec.serving)), spec, options=options)
        return clf, torch.get_num_threads()

    with ThreadPoolExecutor(1) as pool:
        clf, torch_threads = pool.submit(load).result()
    assert torch_threads == 1
    assert clf.net.session.get_session_options().intra_op_num_threads == usable_cpus()
    assert not clf.options.channels_last
