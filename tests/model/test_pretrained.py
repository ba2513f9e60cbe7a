"""--pretrained with torchvision backbones: weights come from torch's local cache only (a clear
error otherwise), load everywhere but the new head, and the trained backbone archives and serves."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from model import checkpoint, nets, pretrained, train
from tests.helpers import assert_archive_serves_like_the_checkpoint

pytestmark = pytest.mark.integration  # fine-tuning from cached torchvision weights

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file name


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture(scope="module")
def resnet18_cache(tmp_path_factory):
    """A real state_dict of torchvision's resnet18 (randomly initialised: no download here) under
    the exact name and place torch.hub keeps the ImageNet file."""
    home = tmp_path_factory.mktemp("torch-home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(123)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, home / "hub" / "checkpoints" / RESNET18_FILE)
    return home, state


def test_the_weights_file_is_torchvision_s_name_in_torch_s_cache(empty_torch_home):
    path = pretrained.torchvision_weights_file("resnet18")
    assert path == empty_torch_home / "hub" / "checkpoints" / RESNET18_FILE
    assert path.name == os.path.basename(torchvision.models.ResNet18_Weights.DEFAULT.url)


def test_missing_weights_name_the_file_and_where_to_put_it(empty_torch_home):
    with pytest.raises(pretrained.MissingWeights) as e:
        pretrained.check_available("resnet18")
    message = str(e.value)
    assert RESNET18_FILE in message and str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--download" in message
    with pytest.raises(ValueError, match="no ImageNet weights for 'small_cnn'"):
        pretrained.check_available("small_cnn")


def test_training_cli_fails_fast_without_the_weights(tmp_path, data_dir):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run([sys.executable, "-m", "model.train", "--arch", "resnet18", "--pretrained",
                           "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "run"), "--no-mlflow"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert RESNET18_FILE in proc.stderr and str(tmp_path / "torch" / "hub" / "checkpoints") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # failed before reading data or writing anything


def test_weights_load_into_everything_but_the_new_head(resnet18_cache, monkeypatch):
    home, state = resnet18_cache
    monkeypatch.setenv("TORCH_HOME", str(home))
    kwargs = nets.arch_kwargs("resnet18", num_classes=10, in_channels=1, image_size=28)
    net = nets.build("resnet18", **kwargs)
    loaded = pretrained.load_pretrained(net, "resnet18", kwargs)
    ours = net.state_dict()
    assert loaded == len(state) - 2  # all but fc.weight and fc.bias
    assert all(torch.equal(ours[f"net.{k}"], v) for k, v in state.items() if not k.startswith("fc."))
    assert ours["net.fc.weight"].shape == (10, 512)


@pytest.fixture(scope="module")
def resnet18_run(resnet18_cache, data_dir, tmp_path_factory):
    """The training CLI on real images with --pretrained from the cache: stage 1 only (frozen)."""
    home, _ = resnet18_cache
    out = tmp_path_factory.mktemp("resnet18")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        train.main(["--data-dir", str(data_dir), "--output-dir", str(out), "--arch", "resnet18", "--pretrained",
                    "--train-per-class", "20", "--test-limit", "100", "--batch-size", "50", "--epochs", "2",
                    "--freeze-epochs", "1", "--stop-after-epoch", "1", "--no-report", "--no-mlflow"])
    return out


def test_training_cli_starts_from_the_cached_weights(resnet18_run, resnet18_cache):
    _, state = resnet18_cache
    ckpt = checkpoint.load(resnet18_run / "model.pt")
    assert ckpt["arch"] == {"name": "resnet18",
                            "kwargs": {"name": "resnet18", "num_classes": 10, "in_channels": 1, "image_size": 28}}
    # stage 1 trained only the head: every other tensor (batch-norm statistics too) is the file's
    trained = ckpt["state_dict"]
    assert all(torch.equal(trained[f"net.{k}"], v) for k, v in state.items() if not k.startswith("fc."))
    assert ckpt["preprocess"]["mean"] == pytest.approx([sum(pretrained.TORCHVISION_MEAN) / 3])


def test_a_torchvision_backbone_archives_and_serves(resnet18_run, samples, tmp_path):
    assert_archive_serves_like_the_checkpoint(resnet18_run / "model.pt", "resnet", samples, tmp_path,
                                              "torchvision_net.py")


def test_vit_position_embeddings_are_resized_to_the_input_grid(monkeypatch):
    """ViT's ImageNet weights are for 224 px (14×14 patches); at 28 px the model runs at 32 (2×2)."""
    torch.manual_seed(0)
    imagenet_state = torchvision.models.vit_b_16().state_dict()
    monkeypatch.setattr(pretrained, "torchvision_state", lambda name, download=False: imagenet_state)
    kwargs = nets.arch_kwargs("vit_b_16", num_classes=10, in_channels=1, image_size=28)
    net = nets.build("vit_b_16", **kwargs)
    pretrained.load_pretrained(net, "vit_b_16", kwargs)
    assert net.state_dict()["net.encoder.pos_embedding"].shape == (1, 2 * 2 + 1, 768)
    assert torch.equal(net.state_dict()["net.conv_proj.weight"], imagenet_state["conv_proj.weight"])
    assert net(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_efficientnet_lite_on_gray_input_sums_the_pretrained_stem():
    """1-channel EfficientNet-Lite from the RGB weights answers like the RGB model on R = G = B."""
    nets3 = nets.arch_kwargs("efficientnet_lite", num_classes=10, in_channels=3)
    nets1 = nets.arch_kwargs("efficientnet_lite", num_classes=10, in_channels=1)
    rgb, gray = nets.build("efficientnet_lite", **nets3), nets.build("efficientnet_lite", **nets1)
    pretrained.load_pretrained(rgb, "efficientnet_lite", nets3)
    pretrained.load_pretrained(gray, "efficientnet_lite", nets1)
    gray._fc.load_state_dict(rgb._fc.state_dict())  # same (new) head
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gray.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), atol=1e-4)
