import json
import re

import pytest
import torch

from model import checkpoint

pytestmark = pytest.mark.integration  # the training CLI trains real networks


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


def small_run(data_dir, out, *extra) -> list[str]:
    return ["--data-dir", str(data_dir), "--output-dir", str(out), "--train-limit", "1500",
            "--test-limit", "300", "--batch-size", "64", "--seed", "3", *extra]


def test_resume_gives_the_same_model_as_an_uninterrupted_run(data_dir, tmp_path):
    from model import train

    train.main(small_run(data_dir, tmp_path / "full", "--epochs", "2", "--augment"))
    train.main(small_run(data_dir, tmp_path / "part", "--epochs", "2", "--augment", "--stop-after-epoch", "1"))
    assert checkpoint.load(tmp_path / "part" / "last.pt")["epoch"] == 1
    # schedule, optimizer and RNG states come from last.pt
    train.main(small_run(data_dir, tmp_path / "resumed", "--epochs", "2", "--augment",
                         "--resume", str(tmp_path / "part" / "last.pt")))
    full = checkpoint.load(tmp_path / "full" / "model.pt")["state_dict"]
    resumed = checkpoint.load(tmp_path / "resumed" / "model.pt")["state_dict"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


VAL_RUN = ("--epochs", "3", "--val-fraction", "0.2", "--opt", "sgd", "--sched", "cosine", "--lr", "0.05",
           "--monitor", "macro_f1", "--patience", "2", "--no-report", "--no-mlflow")


def test_resume_with_validation_gives_the_same_run_as_an_uninterrupted_one(data_dir, tmp_path):
    """The validation history, the best epoch and the stale count travel in last.pt: a run stopped
    after epoch 1 and resumed into another folder selects and saves what the uninterrupted run does."""
    from model import train

    train.main(small_run(data_dir, tmp_path / "full", *VAL_RUN))
    train.main(small_run(data_dir, tmp_path / "part", *VAL_RUN, "--stop-after-epoch", "1"))
    train.main(small_run(data_dir, tmp_path / "resumed", *VAL_RUN, "--resume", str(tmp_path / "part" / "last.pt")))
    full, resumed = (checkpoint.load(tmp_path / d / "model.pt") for d in ("full", "resumed"))
    assert "val_macro_f1" in full["metrics"]["history"][0]
    assert resumed["metrics"]["history"] == full["metrics"]["history"]  # epoch 1's row (from last.pt) too
    assert resumed["epoch"] == full["epoch"]
    assert all(torch.equal(full["state_dict"][k], resumed["state_dict"][k]) for k in full["state_dict"])
    progress = [checkpoint.load(tmp_path / d / "last.pt")["train_state"]["progress"] for d in ("full", "resumed")]
    assert [(p["best"], p["stale"]) for p in progress] == [(progress[0]["best"], progress[0]["stale"])] * 2


def test_a_resumed_run_keeps_its_best_epoch_and_stale_count(data_dir, tmp_path):
    """Learning rate 0: epoch 1 stays the best. Stopped after epoch 2 (one stale epoch) and resumed
    into another folder with patience 2, the run stops after epoch 3 and selects epoch 1, whose
    weights are the best.pt beside last.pt. A run that forgot its validation state would take
    epoch 3 as its best and go on to epoch 5."""
    from model import train

    run = ("--epochs", "5", "--val-fraction", "0.2", "--opt", "sgd", "--lr", "0", "--bn-momentum", "0",
           "--patience", "2", "--train-limit", "400", "--test-limit", "100", "--no-report", "--no-mlflow")
    train.main(small_run(data_dir, tmp_path / "part", *run, "--stop-after-epoch", "2"))
    assert checkpoint.load(tmp_path / "part" / "last.pt")["train_state"]["progress"]["stale"] == 1
    train.main(small_run(data_dir, tmp_path / "resumed", *run, "--resume", str(tmp_path / "part" / "last.pt")))
    ckpt = checkpoint.load(tmp_path / "resumed" / "model.pt")
    assert [h["epoch"] for h in ckpt["metrics"]["history"]] == [1, 2, 3]
    assert ckpt["epoch"] == 1 and checkpoint.load(tmp_path / "resumed" / "best.pt")["epoch"] == 1
    # last.pt alone, without the best.pt it depends on: a clear error, not a crash after training
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "last.pt").write_bytes((tmp_path / "part" / "last.pt").read_bytes())
    with pytest.raises(SystemExit, match=r"train: error: --resume .*best validation epoch \(1\).*best\.pt"):
        train.main(small_run(data_dir, tmp_path / "again", *run, "--resume", str(tmp_path / "alone" / "last.pt")))


@pytest.mark.parametrize("name, says", [("model.pt", "weights only, no training state .* last.pt"),
                                        ("eval.json", "not a checkpoint torch can load"),
                                        ("no-such.pt", "checkpoint not found")])
def test_resume_from_a_file_without_training_state_is_a_cli_error(name, says, trained, tmp_path):
    """`--resume model.pt` (the selected weights, no optimizer/schedule/RNG state) was a bare
    KeyError after the data was read; now a CLI error before anything is read or written."""
    from model import train

    with pytest.raises(SystemExit, match=f"train: error: --resume {re.escape(str(trained.parent / name))}: .*{says}"):
        train.main(["--data-dir", str(tmp_path / "no-data"), "--output-dir", str(tmp_path / "run"),
                    "--resume", str(trained.parent / name)])
    assert not (tmp_path / "run").exists() and not (tmp_path / "no-data").exists()


@pytest.mark.parametrize("argv, expected", [
    ([], None),
    (["--augment"], "fashion-mnist"),
    (["--augment", "--dataset", "mnist"], "mnist"),
    (["--augment", "--image-folder", "x"], "photos"),
    (["--augment", "cifar-10", "--random-erasing", "0.5"], "cifar-10+erasing"),
    (["--random-erasing", "0.25", "--rotation", "5"], "overrides only"),
])
def test_augmentation_preset_follows_the_data_unless_named(argv, expected):
    from model import data, presets, train

    args = train.get_args_parser().parse_args(argv)
    if args.image_folder:
        args.dataset = None  # as main() does for folder/CSV data
    got = train.train_preset(args)
    want = {None: None, "overrides only": presets.TrainPreset(erasing=0.25, rotation=5.0),
            "cifar-10+erasing": presets.TrainPreset(shift=4, flip=True, jitter=0.2, erasing=0.5)}
    assert got == want.get(expected, data.augment_presets().get(expected))


@pytest.mark.parametrize("flag, value, says", [("--random-erasing", "1.5", "a probability"),
                                                ("--crop-scale", "0", "0 < MIN ≤ 1"),
                                                ("--color-jitter", "1", "--color-jitter in [0, 1)")])
def test_bad_augmentation_values_stop_with_a_message(flag, value, says, data_dir, tmp_path):
    from model import train

    with pytest.raises(SystemExit, match="train: error: .*" + re.escape(says)):
        train.main(small_run(data_dir, tmp_path, flag, value))


def test_every_augmentation_at_once_still_learns(data_dir, tmp_path):
    """Crop, rotation, flip, jitter and erasing on real images: the loss still falls."""
    from model import train

    train.main(small_run(data_dir, tmp_path, "--epochs", "2", "--augment", "photos", "--rotation", "10",
                         "--random-erasing", "0.5", "--no-report", "--no-mlflow"))
    history = checkpoint.load(tmp_path / "model.pt")["metrics"]["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]


def test_a_wide_resnet_trains_archives_and_serves(data_dir, samples, tmp_path):
    """The GPU recipe's network, small (WRN-10-1), trained briefly on the CPU: the archive ships
    its file and TorchServe's handler answers as the checkpoint's network does in-process."""
    from model import train
    from tests.helpers import assert_archive_serves_like_the_checkpoint

    train.main(small_run(data_dir, tmp_path / "run", "--arch", "wide_resnet", "--wrn-depth", "10", "--widen", "1",
                         "--flip-tta", "--epochs", "2", "--opt", "sgd", "--lr", "0.05", "--augment",
                         "--random-erasing", "0.5", "--no-report", "--no-mlflow"))
    ckpt = checkpoint.load(tmp_path / "run" / "model.pt")
    assert ckpt["arch"] == {"name": "wide_resnet", "kwargs": {"num_classes": 10, "in_channels": 1, "depth": 10,
                                                            "widen": 1, "flip_tta": True}}
    history = ckpt["metrics"]["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert_archive_serves_like_the_checkpoint(tmp_path / "run" / "model.pt", "wrn", samples, tmp_path,
                                              "wide_resnet.py")


def improvements(scores: list[float]) -> list[bool]:
    """Per epoch: did its validation score beat every earlier one (the first epoch always does)?"""
    return [i == 0 or s > max(scores[:i]) for i, s in enumerate(scores)]


def test_validation_selects_the_best_epoch_and_stops_early(data_dir, tmp_path):
    from model import train

    train.main(small_run(data_dir, tmp_path, "--epochs", "6", "--val-fraction", "0.2", "--opt", "sgd",
                         "--sched", "cosine", "--warmup-epochs", "1", "--lr", "0.05", "--clip-grad-norm", "1.0",
                         "--monitor", "macro_f1", "--patience", "1"))
    history = checkpoint.load(tmp_path / "model.pt")["metrics"]["history"]
    scores = [h["val_macro_f1"] for h in history]
    best_epoch = 1 + scores.index(max(scores))
    assert checkpoint.load(tmp_path / "model.pt")["epoch"] == best_epoch
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == best_epoch
    improved = improvements(scores)
    # patience 1: a run goes on only after an improving epoch, so every epoch but the last improved;
    # one that ended before --epochs ended on a stale epoch (test_a_stale_run_stops_after_patience_epochs
    # makes that certain; here the dynamics of a real run decide which case happens)
    assert all(improved[:-1]), scores
    assert len(history) == 6 or not improved[-1], scores
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("patience, epochs_run", [(1, 2), (2, 3), (None, 4)])
def test_a_stale_run_stops_after_patience_epochs(patience, epochs_run, data_dir, tmp_path):
    """Learning rate 0 and frozen batch-norm statistics: the network never changes, so no epoch
    after the first improves and early stopping must end the run after `patience` stale epochs
    (and never without --patience); the selected model is epoch 1."""
    from model import train

    train.main(small_run(data_dir, tmp_path, "--epochs", "4", "--val-fraction", "0.2", "--opt", "sgd",
                         "--lr", "0", "--bn-momentum", "0", "--train-limit", "400", "--test-limit", "100",
                         "--no-report", "--no-mlflow",
                         *(["--patience", str(patience)] if patience else [])))
    history = checkpoint.load(tmp_path / "model.pt")["metrics"]["history"]
    scores = [h["val_accuracy"] for h in history]
    assert len(set(scores)) == 1, scores  # the premise: nothing changed
    assert len(history) == epochs_run
    assert checkpoint.load(tmp_path / "model.pt")["epoch"] == checkpoint.load(tmp_path / "best.pt")["epoch"] == 1
    assert checkpoint.load(tmp_path / "last.pt")["train_state"]["progress"]["stale"] == epochs_run - 1


def test_image_folder_with_a_split_manifest_and_measured_statistics(test_split, tmp_path):
    from model import data, split, train

    folder = tmp_path / "folder"
    data.export_image_folder(test_split, folder, per_class=30)
    assert split.main(["--image-folder", str(folder), "--fractions", "0.6", "0.2", "0.2", "--seed", "0",
                       "--output", str(tmp_path / "split.json")])
    train.main(["--image-folder", str(folder), "--manifest", str(tmp_path / "split.json"), "--channels", "1",
                "--image-size", "28", "--epochs", "2", "--output-dir", str(tmp_path / "run")])
    ckpt = checkpoint.load(tmp_path / "run" / "model.pt")
    assert ckpt["labels"] == sorted(data.slug(c) for c in test_split.classes)  # ImageFolder: sorted folders
    assert ckpt["preprocess"]["mean"][0] == pytest.approx(0.286, abs=0.03)  # measured on the train split
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["n"] == 60 and report["source"]["image_folder"] == str(folder)


def test_folder_data_without_a_manifest_is_a_clear_error(tmp_path):
    from model import train

    with pytest.raises(SystemExit, match="--manifest"):
        train.main(["--image-folder", str(tmp_path), "--output-dir", str(tmp_path / "run")])


def test_runs_are_tracked_in_mlflow_with_their_artifacts(trained, mlflow_store):
    """The session's `trained` fixture ran the real training CLI with tracking on."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store)
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
              if r.data.params.get("output_dir") == str(trained.parent)]
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["train_limit"] == "6000"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == pytest.approx(checkpoint.load(trained)["metrics"]["accuracy"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "report.md", "report.json", "confusion_matrix.png", "training_curves.png", "model"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]


def test_report_has_baseline_latency_and_plots(trained):
    report = json.loads((trained.parent / "report.json").read_text())
    assert report["baseline_accuracy"] < report["accuracy"]
    assert 0.09 < report["baseline_accuracy"] < 0.12  # Fashion-MNIST classes are balanced
    assert report["top5_accuracy"] >= report["accuracy"]
    assert report["parameters"] == sum(t.numel() for t in checkpoint.build_net(checkpoint.load(trained)).parameters())
    assert report["latency_ms"][0]["device"] == "cpu" and report["latency_ms"][0]["p50"] > 0
    assert report["curves"] and (trained.parent / "training_curves.png").stat().st_size > 1000
    assert "| accuracy |" in (trained.parent / "report.md").read_text()


def test_the_report_written_by_training_equals_the_standalone_report(trained, tmp_path):
    """Training hands the report its test tensors and logits (one evaluation); `model.report`
    alone loads the run's splits again from the checkpoint's args: the numbers must agree."""
    from model import report

    during = json.loads((trained.parent / "report.json").read_text())
    alone = report.build_report(trained, tmp_path)
    for key in ("n", "confusion_matrix", "baseline_class", "parameters"):
        assert alone[key] == during[key], key
    for key in ("accuracy", "macro_f1", "top5_accuracy", "baseline_accuracy"):
        assert alone[key] == pytest.approx(during[key]), key
    assert json.loads(json.dumps(alone["per_class"])) == during["per_class"]
    assert alone["latency_ms"][0]["images"] == during["latency_ms"][0]["images"]


@pytest.fixture(scope="module")
def lite_batch(test_split):
    """32 real images at 32×32 RGB, as uint8, with their labels and spec."""
    from handlers.preprocess import PreprocessSpec
    from model import data, presets

    spec = PreprocessSpec(height=32, width=32, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    ds = data.DatasetView(test_split, range(32), test_split.classes)
    return presets.images_to_uint8(data.pil_images(ds), spec), data.labels_tensor(ds), spec


def test_two_stage_fine_tuning_trains_the_head_then_the_backbone_at_a_lower_lr(lite_batch):
    """EfficientNet-Lite0 from its ImageNet weights: stage 1 changes the head only (backbone
    parameters and batch-norm statistics untouched), stage 2 moves the backbone at lr × 0.1."""
    from model import nets, pretrained, train

    x, y, spec = lite_batch
    args = train.get_args_parser().parse_args(
        ["--arch", "efficientnet_lite", "--pretrained", "--epochs", "2", "--freeze-epochs", "1",
         "--batch-size", "32", "--lr", "1e-3", "--sched", "cosine", "--weight-decay", "0"])
    kwargs = nets.arch_kwargs("efficientnet_lite", num_classes=10, in_channels=3)
    net = nets.build("efficientnet_lite", **kwargs)
    pretrained.load_pretrained(net, "efficientnet_lite", kwargs)
    optimizer = train.make_optimizer(net, args)
    scheduler = train.make_scheduler(optimizer, args, steps_per_epoch=1)
    gen = torch.Generator().manual_seed(0)

    def snapshot():
        return {k: v.clone() for k, v in net.state_dict().items()}

    def changed(before, after, head: bool):
        return {k for k in before if nets.is_head("efficientnet_lite", k) == head and not torch.equal(before[k], after[k])}

    start = snapshot()
    train.train_one_epoch(net, optimizer, scheduler, x, y, spec, args, "cpu", gen, epoch=1)  # one step
    stage1 = snapshot()
    assert changed(start, stage1, head=False) == set()  # frozen: weights and running stats
    assert changed(start, stage1, head=True) == {"_fc.weight", "_fc.bias"}
    head_lr, backbone_lr = (g["lr"] for g in optimizer.param_groups)
    assert backbone_lr == pytest.approx(0.1 * head_lr)

    train.train_one_epoch(net, optimizer, scheduler, x, y, spec, args, "cpu", gen, epoch=2)  # one step
    stage2 = snapshot()
    moved = changed(stage1, stage2, head=False)
    assert "_conv_stem.weight" in moved and "_bn0.running_mean" in moved
    # Adam's first step moves each weight by at most its lr (no weight decay here): the backbone's
    # largest move is its own lr, ten times smaller than the head's.
    step = max((stage2[k] - stage1[k]).abs().max().item() for k in moved if k.endswith("weight"))
    assert step == pytest.approx(backbone_lr, rel=0.05)


def test_resume_across_the_fine_tuning_stages_gives_the_same_model(data_dir, tmp_path):
    from model import train

    run = ["--epochs", "2", "--freeze-epochs", "1", "--train-limit", "500", "--no-report", "--no-mlflow"]
    train.main(small_run(data_dir, tmp_path / "full", *run))
    train.main(small_run(data_dir, tmp_path / "part", *run, "--stop-after-epoch", "1"))
    last = checkpoint.load(tmp_path / "part" / "last.pt")["train_state"]
    assert last["stage"] == {"stage": 1, "freeze_epochs": 1, "backbone_lr_scale": 0.1}
    with pytest.raises(SystemExit, match="backbone_lr_scale': 0.1"):  # another schedule cannot resume it
        train.main(small_run(data_dir, tmp_path / "bad", *run, "--backbone-lr-scale", "0.5",
                             "--resume", str(tmp_path / "part" / "last.pt")))
    train.main(small_run(data_dir, tmp_path / "resumed", *run, "--resume", str(tmp_path / "part" / "last.pt")))
    full = checkpoint.load(tmp_path / "full" / "model.pt")["state_dict"]
    resumed = checkpoint.load(tmp_path / "resumed" / "model.pt")["state_dict"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_train_per_class_takes_a_balanced_subset(data_dir, tmp_path):
    from model import train

    args = train.get_args_parser().parse_args(["--data-dir", str(data_dir), "--train-per-class", "7"])
    trainset, _, _ = train.load_splits(args)
    assert torch.bincount(torch.as_tensor(trainset.targets)).tolist() == [7] * 10


def test_model_modules_import_each_other_at_module_level_without_cycles():
    """model/ imports its own modules at the top of each file only (none hidden in a function,
    where data ↔ datasets_csv and train ↔ report once hid their cycles) and the graph is acyclic."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "model").rglob("*.py")}

    def imported(node) -> set[str]:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            return set()
        return {n for n in names if n in files}

    graph, hidden = {}, []
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        graph[name] = {m for node in tree.body for m in imported(node) if m != name and not name.startswith(m + ".")}
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            hidden += [f"{name}.{fn.name} imports {m}" for node in ast.walk(fn) for m in imported(node)]
    assert not hidden, hidden
    assert {"model.datasets_csv", "model.image_files"} <= graph["model.data"] and "model.report" in graph["model.train"]

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph[start]):
            if dep in path:
                return path[path.index(dep):] + [dep]
            found = cycle_from(dep, path + [dep])
            if found:
                return found
        return None

    cycles = [c for name in graph if (c := cycle_from(name, [name]))]
    assert not cycles, cycles[0]
