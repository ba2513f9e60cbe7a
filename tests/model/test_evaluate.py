import json

import pytest
import torch

from model import evaluate


def test_metrics_on_a_hand_checked_case():
    # class 0: precision 1, recall 1/2, F1 2/3; class 1: precision 2/3, recall 1, F1 4/5
    m = evaluate.classification_metrics(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]


def test_class_never_predicted_has_zero_precision_not_nan():
    m = evaluate.classification_metrics(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), ["a", "b", "c"])
    assert m["per_class"]["b"]["precision"] == 0.0 and m["macro_f1"] == pytest.approx(1 / 6)


def test_evaluate_cli_writes_a_report_next_to_the_checkpoint(trained, data_dir, test_split, capsys):
    metrics = evaluate.main(["--checkpoint", str(trained), "--data-dir", str(data_dir)])
    report = json.loads((trained.parent / "eval.json").read_text())
    assert report["n"] == 10000 and report["accuracy"] == pytest.approx(metrics["accuracy"])
    assert list(report["per_class"]) == test_split.classes
    assert sum(c["support"] for c in report["per_class"].values()) == 10000
    assert "macro-F1" in capsys.readouterr().out
