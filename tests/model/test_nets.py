import ast
import inspect

import pytest
import torch

from model import nets, pretrained, train_args
from tests.helpers import names_written_outside


def test_small_cnn_maps_images_to_class_logits():
    net = nets.build("small_cnn", num_classes=7, in_channels=3, width=8)
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 7)
    assert net(torch.randn(1, 3, 64, 48)).shape == (1, 7)  # any size >= 28 reaches the same head


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture"):
        nets.build("resnet9000")


@pytest.mark.parametrize("name", sorted(nets.ARCHS))
def test_network_files_are_self_contained_for_the_archive(name):
    """The file ships alone inside the .mar: one class, constructible from defaults (the archive's
    kwargs only override them), importing torch only (torchvision too for its backbones: both
    are in the serving environment)."""
    arch = nets.ARCHS[name]
    tree = ast.parse(arch.file.read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == [arch.cls]
    imported = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    allowed = {"torch", "__future__"} | ({"torchvision"} if arch.file.stem == "torchvision_net" else set())
    assert imported <= allowed
    init = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    args = next(f.args for f in init if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assert len(args.defaults) == len(args.args) - 1  # every argument but self has a default


def test_small_cnn_defaults_keep_the_quick_recipe_parameter_names():
    """Checkpoints of the quick recipe (kwargs without depth/flip_tta) must keep loading."""
    names = [k for k in nets.build("small_cnn").state_dict() if k.endswith("weight")]
    assert names == ["features.0.0.weight", "features.0.1.weight", "features.2.0.weight", "features.2.1.weight",
                     "features.4.0.weight", "features.4.1.weight", "head.2.weight"]


def test_small_cnn_depth_and_flip_tta():
    torch.manual_seed(0)
    net = nets.build("small_cnn", width=8, depth=2, flip_tta=True)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 6
    x = torch.randn(3, 1, 28, 28)
    net.eval()
    with torch.no_grad():
        plain = net.head(net.features(x))
        mirrored = net.head(net.features(x.flip(-1)))
        assert torch.allclose(net(x), (plain + mirrored) / 2, atol=1e-6)  # eval: both views
        assert torch.allclose(net(x.flip(-1)), net(x), atol=1e-6)  # so mirror-invariant
    net.train()
    assert net(x).shape == (3, 10)  # training sees one view (augmentation flips)


def test_wide_resnet_is_wrn_d_k_with_flip_tta():
    net = nets.build("wide_resnet", num_classes=10, in_channels=1, depth=16, widen=8)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(10.96e6, rel=0.01)  # WRN-16-8
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 1 + 2 * 6 + 3  # stem, 6 blocks, 3 projections
    torch.manual_seed(0)
    small = nets.build("wide_resnet", num_classes=4, in_channels=3, depth=10, widen=1, flip_tta=True).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert small(x).shape == (2, 4)
        assert torch.allclose(small(x), (small.logits(x) + small.logits(x.flip(-1))) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        nets.build("wide_resnet", depth=12)


TORCHVISION = sorted(name for name, arch in nets.ARCHS.items() if arch.cls == "TorchvisionNet")


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_backbones_classify_fashion_mnist_shaped_input(name):
    """Gray 28×28 in, logits for our classes out; the head is the last Linear, sized for them."""
    kwargs = nets.arch_kwargs(name, num_classes=10, in_channels=1, image_size=28)
    net = nets.build(name, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    head = {k: v.shape for k, v in net.state_dict().items() if nets.is_head(name, k)}
    assert sorted(head) == [f"{nets.ARCHS[name].head}.bias", f"{nets.ARCHS[name].head}.weight"]
    assert head[f"{nets.ARCHS[name].head}.bias"] == (10,)


def test_gray_input_is_the_gray_image_on_all_three_channels():
    torch.manual_seed(0)
    gray = nets.build("resnet18", num_classes=4, in_channels=1, image_size=32).eval()
    rgb = nets.build("resnet18", num_classes=4, in_channels=3, image_size=32).eval()
    rgb.load_state_dict(gray.state_dict())  # same parameters: torchvision's own layout
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_backbones_with_fixed_input_sizes_resize_inside_the_model():
    vit = nets.build("vit_b_16", num_classes=3, in_channels=3, image_size=28)
    assert vit.size == 32 and vit.net.image_size == 32  # 16-pixel patches: the next multiple
    assert nets.build("vgg16", image_size=28).size == 32  # five 2×2 pools need 32 px
    assert nets.build("resnet18", image_size=28).size is None  # any size


def test_arch_kwargs_name_the_torchvision_backbone():
    assert nets.arch_kwargs("mobilenet_v3_small", num_classes=5) == {"name": "mobilenet_v3_small", "num_classes": 5}
    assert nets.arch_kwargs("small_cnn", width=8) == {"width": 8}


def test_per_architecture_facts_live_in_their_archs_entry_only():
    assert names_written_outside("ARCHS", set(nets.ARCHS)) == []


@pytest.mark.parametrize("name", sorted(nets.ARCHS))
def test_every_arch_entry_builds_from_the_training_flags_it_names(name):
    """The entry's file, options (flags that exist, arguments the class takes), head and weights
    source are complete: the network builds from the CLI defaults with a head for our classes."""
    arch = nets.ARCHS[name]
    assert arch.file.is_file() and arch.module == f"model.nets.{arch.file.stem}"
    params = set(inspect.signature(arch.constructor()).parameters)
    set_by_flags = {o.kwarg for o in arch.options} | ({arch.size_kwarg} if arch.size_kwarg else set())
    assert set(arch.kwargs) | set_by_flags <= params and not set(arch.kwargs) & set_by_flags
    parser = train_args.parser()
    assert {o.dest for o in arch.options} <= {a.dest for a in parser._actions}
    assert arch.weights is None or isinstance(arch.weights, nets.Weights)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        net = nets.build(name, num_classes=7, in_channels=1, **arch.options_from(parser.parse_args([]), 28))
    assert [m for m in net.get_submodule(arch.head).modules() if isinstance(m, torch.nn.Linear)][-1].out_features == 7


@pytest.mark.parametrize("argv, want", [
    (["--arch", "small_cnn"], {"width": 16}),  # the quick recipe's checkpoint kwargs, exactly
    (["--arch", "small_cnn", "--width", "8", "--depth", "2", "--flip-tta", "--dropout", "0.3"],
     {"width": 8, "depth": 2, "flip_tta": True}),
    (["--arch", "wide_resnet"], {"depth": 16, "widen": 8}),
    (["--arch", "wide_resnet", "--wrn-depth", "10", "--widen", "2", "--dropout", "0.3", "--flip-tta", "--depth", "3"],
     {"depth": 10, "widen": 2, "dropout": 0.3, "flip_tta": True}),
    (["--arch", "efficientnet_lite", "--width", "8", "--flip-tta"], {}),
    (["--arch", "vit_b_16", "--depth", "3"], {"image_size": 28}),
])
def test_training_flags_set_only_their_own_architecture_s_arguments(argv, want):
    args = train_args.parser().parse_args(argv)
    assert nets.ARCHS[args.arch].options_from(args, 28) == want


@pytest.mark.parametrize("name", sorted(nets.ARCHS))
def test_pretrained_handles_every_declared_weights_source(name, tmp_path, monkeypatch):
    """A declared source is looked up (found, or a missing-file error); no source is refused with
    the list of those that have one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    if nets.ARCHS[name].weights is None:
        with pytest.raises(ValueError) as e:
            pretrained.check_available(name)
        assert str(e.value) == (f"--pretrained: no ImageNet weights for {name!r}; use efficientnet_lite or one of "
                                f"{TORCHVISION}")
    else:
        try:
            pretrained.check_available(name)
        except FileNotFoundError:
            pass
