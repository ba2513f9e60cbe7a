"""`make bench` (scripts/harness/bench): the load generator's counting, the ratios and targets, the
FastAPI baseline's answers, and a short real run through every serving path (real TorchServe,
real KServe-native runtime, real uvicorn) that must come back with correct answers only."""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
import requests
import torch

from scripts.harness.bench import __main__ as bench
from scripts.harness.bench import report, targets
from scripts.harness.bench.points import Point, run_point
from tests.helpers import MODEL_NAME, assert_same_topk


def test_quantiles_are_nearest_rank():
    p = Point("t", 1, seconds=2.0, latencies=[i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert p.quantile_ms(0.50) == pytest.approx(50)
    assert p.quantile_ms(0.95) == pytest.approx(95)
    assert p.quantile_ms(0.99) == pytest.approx(99)
    assert p.throughput == 50.0


def test_load_counts_wrong_answers_and_errors_apart_from_correct_ones():
    expected = ["a", "b", "c", "d"]
    seen = set()
    lock = threading.Lock()

    def client():
        def send(i: int) -> str:
            with lock:
                seen.add(threading.get_ident())
            if i == 2:
                raise ConnectionError("refused")
            return "wrong" if i == 3 else expected[i]
        return send

    point = run_point("fake", client, expected, concurrency=2, seconds=0.3, warmup_seconds=0.05,
                      cpu_seconds=lambda: 0.0)
    assert len(seen) == 2  # one sender per client thread
    assert point.ok > 0 and point.errors > 0 and point.wrong > 0
    # one round-robin over the images across threads: half the requests are images 0/1 (correct),
    # a quarter each fail; each thread may drop the one answer that came after the deadline
    assert abs(point.errors - point.wrong) <= 2 and abs(point.ok - 2 * point.errors) <= 6
    assert point.first_error == "ConnectionError: refused"
    assert point.server_cpu_ms == 0.0


def test_max_requests_bounds_a_point():
    point = run_point("fast", lambda: (lambda i: "a"), ["a"], concurrency=3, seconds=5, warmup_seconds=0,
                      max_requests=50)
    assert point.ok == 50 and point.seconds < 5


def pt(target, c, rps, p50):
    return {"target": target, "concurrency": c, "throughput_rps": rps, "p50_ms": p50}


def test_ratios_are_taken_within_the_run_at_the_same_concurrency():
    points = [pt("in-process", 1, 1000, 1.0), pt("fastapi-baseline", 1, 500, 2.0), pt("fastapi-baseline", 8, 800, 9.0),
              pt("fastapi-1-thread", 8, 1000, 8.0),
              pt("kserve-rest", 1, 400, 2.5), pt("kserve-rest", 8, 880, 8.0), pt("torchserve-rest", 8, 360, 20.0),
              pt("torchserve-rest", 1, 300, 3.0),
              pt("in-process-onnx", 1, 1490, 0.7), pt("kserve-rest-onnx", 8, 2000, 4.0)]
    report.add_ratios(points)
    index = report.by_key(points)
    assert index[("kserve-rest", 8)]["x_baseline"] == 1.1
    assert index[("kserve-rest", 8)]["x_baseline_1t"] == 0.88 and index[("kserve-rest", 1)]["x_baseline_1t"] is None
    assert index[("kserve-rest", 1)]["x_baseline"] == 0.8
    assert index[("kserve-rest", 8)]["x_inprocess"] == 0.88
    assert index[("kserve-rest", 1)]["p50_added_ms"] == 1.5
    # kserve: 1.1× the baseline (met) but 0.88× the 1-thread one (missed); torchserve 0.45× and
    # 0.36× (both missed) at 8 clients, 0.6× alone (met); ONNX Runtime in-process 1.49× the eager
    # pipeline (missed), the runtime on ONNX 2.5× the baseline (met); p50 added 1.5 ms (met)
    checks = report.verdicts(points)
    assert [x["met"] for x in checks] == [True, False, False, False, True, False, True, True]
    assert checks[4]["check"] == "torchserve-rest throughput ≥ 0.5× the baseline at concurrency 1"
    assert [x["value"] for x in checks[4:7]] == [0.6, 1.49, 2.5]
    assert checks[5]["check"] == "in-process-onnx throughput ≥ 1.5× in-process at concurrency 1"
    slow = [dict(p) for p in points]
    report.by_key(slow)[("kserve-rest", 1)]["p50_ms"] = 3.5  # 2.5 ms over in-process: misses
    report.add_ratios(slow)
    assert report.verdicts(slow)[-1]["met"] is False


def test_a_missing_checkpoint_or_a_bad_setting_is_a_clear_cli_error(tmp_path, capsys):
    assert bench.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
    assert "make train" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--torchserve-batch", "eight"])
    assert "SIZE:DELAY_MS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--torchserve-batch", "8:0:0"])
    assert "workers must be ≥ 1" in capsys.readouterr().err
    assert bench.batch_setting("8:0") == (8, 0, None) and bench.batch_setting("8:0:2") == (8, 0, 2)


def test_the_baseline_answers_like_the_handler(trained, samples, store, tmp_path):
    """The FastAPI baseline is a fair comparison: same checkpoint, same preprocessing numbers, the
    same top-k (up to float noise) on real test images."""
    classifier = targets.load_inprocess(store / "model-store" / f"{MODEL_NAME}.mar", tmp_path / "unpacked")
    folder, rows = samples
    with targets.Stopper(targets.start_baseline(trained, tmp_path / "baseline")) as base:
        for row in rows:
            image = (folder / row["file"]).read_bytes()
            r = requests.post(f"http://127.0.0.1:{base.port}/predict", files={"file": ("x.png", image)}, timeout=30)
            assert r.status_code == 200
            assert_same_topk(r.json(), classifier.predict([image])[0])


def test_a_short_run_through_every_path(trained, data_dir, tmp_path):
    out = tmp_path / "bench"
    code = bench.main(["--checkpoint", str(trained), "--data-dir", str(data_dir), "--images", "8",
                       "--concurrency", "1", "4", "--duration", "1.5", "--warmup", "0.3",
                       # the archive's own TorchServe setting (the light policy's): skipped, not run twice
                       "--torchserve-batch", "8:0:2", "--inprocess-batches", "1", "4", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "bench.json").read_text())
    got = {(p["target"], p["concurrency"]) for p in results["points"]}
    servers = ("fastapi-baseline", "fastapi-1-thread", "kserve-rest", "kserve-grpc", "torchserve-rest", "torchserve-grpc",
               "kserve-rest-onnx", "kserve-grpc-onnx", "torchserve-rest-onnx", "kserve-rest-int8", "torchserve-rest-int8")
    assert got == {("in-process", 1), ("in-process-onnx", 1), ("in-process-int8", 1)} | \
        {(t, c) for t in servers for c in (1, 4)}
    for p in results["points"]:
        assert p["errors"] == 0 and p["wrong"] == 0, p
        assert p["requests"] > 0 and p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"], p
        assert p["server_cpu_ms"] > 0
        assert p["x_baseline"] > 0 and p["x_baseline_1t"] > 0 and p["x_inprocess"] > 0
    assert [b["batch"] for b in results["inprocess_batches"]] == [1, 4]
    # concurrency 8 was not measured: its targets are reported as not met, never as passed
    checks = results["verdicts"]
    assert [(v["value"] is None, v["met"]) for v in checks if "concurrency 8" in v["check"]] == [(True, False)] * 5
    assert all(v["value"] is not None for v in checks if "concurrency 8" not in v["check"])
    md = (out / "bench.md").read_text()
    assert "| kserve-grpc | 4 |" in md and results["machine"]["cpu"] in md
    # each archive's own policy: the ONNX one is chosen for its format (scripts/serve/policy.py)
    assert results["onnx_serving_policy"] and "- the eager archive's serving policy" in md
    assert "- the ONNX archive's serving policy (the `-onnx` targets)" in md
    assert results["int8_serving_policy"] and "- the int8 archive's serving policy (the `-int8` targets)" in md
    # the int8 archive's answers are its own: how many differ from fp32's is said, not counted wrong
    assert any(n.startswith("int8: top-1 differs from the fp32 handler's on ") for n in results["notes"])
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gpu_comparison_runs_its_three_paths_on_the_cpu_too(tmp_path):
    """scripts/harness/bench/gpu.py is meant for the device machine; on the CPU the same code runs (tiny
    settings): the real stock TorchServe handler, ours with the tensor path, the raw forward."""
    from scripts.harness.bench import gpu
    assert gpu.main(["--device", "cpu", "--arch", "resnet18", "--batch", "2", "--seconds", "0.1",
                     "--warmup", "0", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu-path-on-cpu.json").read_text())
    assert set(record["results"]) == {"stock", "ours", "raw"}
    assert all(r["images_per_s"] > 0 and r["batches"] >= 1 for r in record["results"].values())
    assert "tensor decode" in record["ours"] and "channels_last" in record["ours"]
    assert (tmp_path / "gpu-path-on-cpu.md").read_text().count("| ours |") == 1
    import ts.torch_handler.image_classifier as stock
    assert stock.ImageClassifier.image_processing.transforms[0].size == 256  # the stock handler, unchanged
    if not torch.cuda.is_available():
        assert gpu.main(["--device", "cuda", "--out", str(tmp_path)]) == 2  # a clear error, not a crash


# --- repeats, spread, the limit and the real-size models ---------------------------------------

def test_rounds_become_one_point_of_medians_with_their_spread():
    rounds = [{"target": "kserve-rest", "concurrency": 8, "seconds": 1.0, "requests": n, "errors": e, "wrong": 0,
               "throughput_rps": rps, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "server_cpu_ms": 1.0}
              for n, e, rps, p50 in ((100, 0, 100.0, 10.0), (80, 1, 80.0, 12.0), (120, 0, 120.0, 8.0))]
    p = bench.aggregate(rounds)
    assert (p["throughput_rps"], p["throughput_min"], p["throughput_max"]) == (100.0, 80.0, 120.0)
    assert (p["p50_ms"], p["requests"], p["errors"], p["repeats"]) == (10.0, 300, 1, 3)
    assert bench.aggregate(rounds[:1]) is rounds[0]  # one round: the point itself


@pytest.mark.parametrize("target, base, verdict", [
    ((150, 140, 160), (100, 95, 105), "MET"),  # 1.5×, and even the worst round beats the best baseline
    ((110, 100, 120), (100, 90, 110), "SPREAD"),  # medians meet 1.0× but the ranges overlap
    ((90, 85, 95), (100, 96, 104), "MISS"),  # every round below
    ((95, 80, 120), (100, 90, 110), "SPREAD"),  # medians miss, but one round would have met it
])
def test_a_difference_inside_the_spread_is_not_a_verdict(target, base, verdict):
    point = lambda t, rps: {"target": t, "concurrency": 8, "throughput_rps": rps[0], "throughput_min": rps[1],  # noqa: E731
                            "throughput_max": rps[2]}
    assert report.spread_verdict(point("kserve-rest", target), point("fastapi-baseline", base), 1.0) == verdict


def test_real_size_targets_and_the_share_of_the_limit():
    points = [pt("fastapi-baseline", 1, 40, 25), pt("fastapi-baseline", 8, 43, 180),
              pt("kserve-rest", 1, 44, 22), pt("kserve-rest", 8, 70, 110), pt("torchserve-rest", 8, 40, 200),
              pt("kserve-rest-onnx", 1, 30, 30), pt("kserve-rest-onnx", 8, 66, 120), pt("torchserve-rest-onnx", 8, 50, 160)]
    report.add_ratios(points, {"end_to_end_images_per_s": 80.0})
    checks = {v["check"]: v for v in report.verdicts(points, "resnet50")}
    # the int8 archive was not measured: its three checks are misses, and no int8 limit check
    assert [v["met"] for v in checks.values()] == [True, True, False, False, True, True, False, False, False, True]
    assert checks["kserve-rest throughput ≥ 1.5× the baseline at concurrency 8"]["value"] == pytest.approx(1.628, abs=1e-3)
    best = checks["best served path (kserve-rest) ≥ 0.8× the in-process limit at concurrency 8"]
    assert best["value"] == 0.875 and best["verdict"] == "MET"  # 70 of 80 images/s


def test_int8_paths_are_judged_against_the_int8_limit_only():
    """int8 answers differently: it never raises the fp32 paths' limit, nor counts as their best."""
    points = [pt("fastapi-baseline", 1, 10, 100), pt("fastapi-baseline", 8, 10, 800),
              pt("kserve-rest-onnx", 8, 18, 400), pt("kserve-rest-int8", 1, 50, 20), pt("kserve-rest-int8", 8, 60, 130),
              pt("torchserve-rest-int8", 8, 45, 170)]
    report.add_ratios(points, {"end_to_end_images_per_s": 20.0, "int8": {"end_to_end_images_per_s": 70.0}})
    x_limit = {(p["target"], p["concurrency"]): p["x_limit"] for p in points}
    assert x_limit[("kserve-rest-onnx", 8)] == 0.9 and x_limit[("kserve-rest-int8", 8)] == pytest.approx(0.857, abs=1e-3)
    checks = {v["check"]: v for v in report.verdicts(points, "resnet50")}
    assert checks["best served path (kserve-rest-onnx) ≥ 0.8× the in-process limit at concurrency 8"]["met"]
    int8 = checks["best served path (kserve-rest-int8) ≥ 0.8× the int8 in-process limit at concurrency 8"]
    assert int8["value"] == pytest.approx(0.857, abs=1e-3) and int8["verdict"] == "MET"
    assert checks["kserve-rest-int8 throughput ≥ 1.5× the baseline at concurrency 8"]["value"] == 6.0
    assert checks["torchserve-rest-int8 throughput ≥ 1.0× the baseline at concurrency 8"]["value"] == 4.5


def test_the_limit_sweeps_batch_threads_and_memory_format(tmp_path):
    """A real sweep, tiny: a small CNN from the registry, real test images."""
    from model import checkpoint, data, nets
    from scripts.harness.bench import limit

    spec = data.DATASETS["fashion-mnist"].spec
    kwargs = nets.arch_kwargs("small_cnn", num_classes=10, in_channels=1, width=8)
    ckpt = checkpoint.save(tmp_path / "cnn.pt", nets.build("small_cnn", **kwargs), arch="small_cnn",
                           arch_kwargs=kwargs, labels=[str(i) for i in range(10)], spec=spec, args={}, epoch=0)
    threads = torch.get_num_threads()
    result = limit.sweep(ckpt, _pngs(4), batches=(1, 4), threads=(1, 2), seconds=0.05)
    assert torch.get_num_threads() == threads  # the process' setting is restored
    assert [(r["batch"], r["threads"], r["channels_last"], r["onnx"]) for r in result["rows"]] == \
        [(b, t, c, False) for t in (1, 2) for c in (False, True) for b in (1, 4)] + \
        [(b, t, False, True) for t in (1, 2) for b in (1, 4)]  # ONNX Runtime: its own layout
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    assert result["best"]["images_per_s"] == max(r["images_per_s"] for r in result["rows"])
    assert 0 < result["end_to_end_images_per_s"] < result["best"]["images_per_s"]
    assert "int8" not in result  # only when asked


def test_the_int8_limit_is_its_own(tmp_path):
    """The int8 export swept beside fp32: its rows are marked, its best is its own limit, and the
    fp32 limit is the best of the fp32 rows alone."""
    from model import checkpoint, data, nets
    from scripts.harness.bench import limit

    spec = data.DATASETS["fashion-mnist"].spec
    kwargs = nets.arch_kwargs("small_cnn", num_classes=10, in_channels=1, width=8)
    ckpt = checkpoint.save(tmp_path / "cnn.pt", nets.build("small_cnn", **kwargs), arch="small_cnn",
                           arch_kwargs=kwargs, labels=[str(i) for i in range(10)], spec=spec, args={}, epoch=0)
    result = limit.sweep(ckpt, _pngs(4), batches=(1,), threads=(1,), seconds=0.05, int8=True)
    fp32 = [r for r in result["rows"] if not r.get("int8")]
    int8 = [r for r in result["rows"] if r.get("int8")]
    assert [(r["batch"], r["threads"], r["onnx"]) for r in int8] == [(1, 1, True)]
    assert result["best"]["images_per_s"] == max(r["images_per_s"] for r in fp32)
    assert result["int8"]["best"] == int8[0] and result["int8"]["best_setting"].endswith("ONNX Runtime int8")
    assert 0 < result["int8"]["end_to_end_images_per_s"] < int8[0]["images_per_s"]
    assert "| ONNX Runtime int8 | 1 | 1 | – |" in "\n".join(limit.table(result))


def _pngs(n: int) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("L", (28, 28), color=40 * i).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def test_the_real_size_models_send_real_photos():
    from PIL import Image

    from scripts.harness.bench import models
    photos = models.photos(Path("unused"), 32)
    assert len(photos) == len(models.PHOTOS) == 6 and len(set(photos)) == 6
    for body in photos:
        with Image.open(io.BytesIO(body)) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", models.PHOTO_SIZE, "RGB")


@pytest.mark.integration
def test_a_short_real_size_run_with_rounds_and_the_limit(data_dir, tmp_path):
    out = tmp_path / "bench"
    code = bench.main(["--bench-model", "imagenet", "--data-dir", str(data_dir), "--images", "3",
                       "--targets", "in-process", "fastapi-baseline", "kserve-rest", "--concurrency", "1",
                       "--repeats", "2", "--duration", "0.6", "--warmup", "0.2", "--inprocess-batches", "1",
                       "--limit", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "bench-imagenet.json").read_text())
    assert results["repeats"] == 2 and len(results["load_average"]["end"]) == 3
    for p in results["points"]:
        assert p["repeats"] == 2 and p["errors"] == 0 and p["wrong"] == 0, p
        assert p["throughput_min"] <= p["throughput_rps"] <= p["throughput_max"]
        assert 0 < p["x_limit"]
    assert {(r["batch"], r["threads"], r["onnx"]) for r in results["limit"]["rows"]} == \
        {(b, t, onnx) for b in (1, 8, 32) for t in (1, 2) for onnx in (False, True)}
    # concurrency 8 was not measured, nor the ONNX and int8 archives: those checks are misses; the
    # eager runtime's at concurrency 1 has a value
    assert [(v["check"], v["value"] is not None) for v in results["verdicts"]][:2] == \
        [("kserve-rest throughput ≥ 1.0× the baseline at concurrency 1", True),
         ("kserve-rest throughput ≥ 1.5× the baseline at concurrency 8", False)]
    assert [v["value"] for v in results["verdicts"][2:]] == [None] * 7
    md = (out / "bench-imagenet.md").read_text()
    assert "EfficientNet-Lite0" in md and "× limit" in md and "The machine's limit" in md
    assert (out / "bench-imagenet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
