import pytest
import torch

from model import checkpoint, data, nets


def test_checkpoint_round_trip_under_weights_only(tmp_path):
    net = nets.build("small_cnn", num_classes=3, in_channels=1, width=4)
    spec = data.DATASETS["fashion-mnist"].spec
    path = checkpoint.save(tmp_path / "c.pt", net, arch="small_cnn",
                           arch_kwargs={"num_classes": 3, "in_channels": 1, "width": 4},
                           labels=["a", "b", "c"], spec=spec, args={"data_dir": tmp_path, "lr": 0.1},
                           epoch=2, metrics={"accuracy": 0.5})
    ckpt = checkpoint.load(path)  # torch.load(weights_only=True) inside
    assert ckpt["labels"] == ["a", "b", "c"] and ckpt["args"] == {"data_dir": str(tmp_path), "lr": 0.1}
    assert checkpoint.preprocess_spec(ckpt) == spec
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(checkpoint.build_net(ckpt)(x), net.eval()(x))


def test_missing_and_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope.pt")
    torch.save({"format": 99}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        checkpoint.load(tmp_path / "other.pt")
