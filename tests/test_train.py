import json

from model import checkpoint


def test_training_cli_writes_a_checkpoint_that_carries_args_labels_and_spec(trained, test_split):
    ckpt = checkpoint.load(trained)
    assert ckpt["labels"] == test_split.classes
    assert ckpt["args"]["epochs"] == 2 and ckpt["args"]["train_limit"] == 6000
    assert ckpt["preprocess"]["height"] == 28 and ckpt["preprocess"]["channels"] == 1
    assert ckpt["arch"] == {"name": "small_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "width": 16}}


def test_training_learns(trained):
    metrics = checkpoint.load(trained)["metrics"]
    losses = [h["train_loss"] for h in metrics["history"]]
    assert len(losses) == 2 and losses[-1] < losses[0]
    # 2 epochs on 6k images: far above the 10% of chance (the full recipe is checked by the demo)
    assert metrics["accuracy"] > 0.7 and metrics["macro_f1"] > 0.65


def test_training_writes_an_evaluation_report(trained):
    report = json.loads((trained.parent / "eval.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "n"} <= set(report)
