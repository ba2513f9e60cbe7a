"""scripts/serve/policy.py: a model's serving policy comes from its FLOPs per image, the same for
the same network wherever it is archived."""
from handlers.preprocess import PreprocessSpec
from model import data, nets
from scripts.serve import policy

GRAY_28 = data.DATASETS["fashion-mnist"].spec
RGB_224 = data.DATASETS["imagenet"].spec


def net(arch: str, spec: PreprocessSpec, classes: int):
    size = {nets.ARCHS[arch].size_kwarg: spec.height} if nets.ARCHS[arch].size_kwarg else {}
    return nets.build(arch, num_classes=classes, in_channels=spec.channels, **size)


def test_the_default_cnn_is_light_and_resnet50_heavy():
    small, why_small = policy.choose(net("small_cnn", GRAY_28, 10), GRAY_28)
    big, why_big = policy.choose(net("resnet50", RGB_224, 1000), RGB_224)
    assert small == policy.LIGHT and why_small.startswith("light model: 4 MFLOPs")
    assert big == policy.HEAVY and why_big.startswith("heavy model: 8,1")  # ResNet-50: 8.2 GFLOPs
    assert (big.workers, big.batch_size, big.max_batch_delay_ms, big.torch_threads, big.channels_last) == (1, 1, 0, 0, True)


def test_flops_are_counted_not_timed():
    n = net("small_cnn", GRAY_28, 10)
    assert policy.forward_flops(n, GRAY_28) == policy.forward_flops(n, GRAY_28) > 0
    # the same network on 4 times the pixels costs about 4 times as much
    big = PreprocessSpec(height=56, width=56, channels=1, mean=(0.5,), std=(0.5,))
    assert 3.5 < policy.forward_flops(net("small_cnn", big, 10), big) / policy.forward_flops(n, GRAY_28) < 4.5


def test_an_onnx_archive_of_a_mid_size_model_runs_single_thread_passes_side_by_side():
    """EfficientNet-Lite0 (0.77 GFLOPs) as ONNX or int8: two one-thread passes (parallel); as eager
    one pass on every CPU (heavy); ResNet-50 (8.2 GFLOPs) one pass on every CPU, batched when ONNX
    Runtime runs it; ONNX passes take up to 8 queued images; light stays light."""
    lite = net("efficientnet_lite", RGB_224, 1000)
    chosen, why = policy.choose(lite, RGB_224, "onnx")
    assert chosen == policy.PARALLEL and "single-thread passes side by side, up to 8 queued images each" in why
    assert (chosen.workers, chosen.batch_size, chosen.max_batch_delay_ms, chosen.torch_threads) == (2, 8, 0, 1)
    assert policy.choose(lite, RGB_224, "eager")[0] == policy.HEAVY
    assert policy.choose(lite, RGB_224, "torchscript")[0] == policy.HEAVY
    assert policy.choose(lite, RGB_224, "onnx-int8")[0] == policy.PARALLEL  # int8 runs in ONNX Runtime too
    resnet, why = policy.choose(net("resnet50", RGB_224, 1000), RGB_224, "onnx")
    assert resnet == policy.BATCHED and "one pass on every CPU, up to 8 queued images" in why
    assert (resnet.workers, resnet.batch_size, resnet.max_batch_delay_ms, resnet.torch_threads) == (1, 8, 0, 0)
    assert policy.choose(net("resnet50", RGB_224, 1000), RGB_224, "onnx-int8")[0] == policy.BATCHED
    assert policy.choose(net("resnet50", RGB_224, 1000), RGB_224, "eager")[0] == policy.HEAVY
    assert policy.choose(net("small_cnn", GRAY_28, 10), GRAY_28, "onnx")[0] == policy.LIGHT
