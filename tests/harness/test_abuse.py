"""scripts/harness/bench/abuse.py: the largest accepted image, the process group's memory, and a
real run against the KServe-native runtime whose answers are the limits' (413, 408, 200/503)."""
from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from scripts.harness.bench import abuse


def test_the_largest_image_is_a_real_png_just_under_the_limit():
    limit = 2 * 1024 * 1024
    data = abuse.largest_image(limit)
    assert 0.9 * limit < len(data) <= limit
    assert Image.open(io.BytesIO(data)).format == "PNG"


def test_the_group_rss_counts_this_process():
    assert abuse.group_rss_mib(os.getpgid(0)) > 10


@pytest.mark.integration
def test_a_run_against_the_kserve_native_runtime_records_the_limits_answers(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_BODY_TIMEOUT_S", "2")
    monkeypatch.setenv("SERVE_MAX_INFLIGHT", "20")
    assert abuse.main(["--checkpoint", str(trained), "--out", str(tmp_path), "--runtimes", "kserve-native",
                       "--slow-seconds", "6"]) == 0
    result = json.loads((tmp_path / "abuse.json").read_text())
    assert result["limits"]["body_timeout_s"] == 2
    rows = {r["case"]: r for r in result["runtimes"]["kserve-native"]}
    assert set(rows) == {"max-size", "max-size ×20", "oversize", "burst", "slow"}
    for case, n in (("max-size", 16), ("max-size ×20", 20)):  # within max_inflight: all served
        assert {int(k): v for k, v in rows[case]["statuses"].items()} == {200: n}
    assert sum(rows["burst"]["statuses"].values()) == 400
    assert set(map(int, rows["burst"]["statuses"])) <= {200, 503}
    assert {int(k): v for k, v in rows["oversize"]["statuses"].items()} == {413: 16}
    assert {int(k): v for k, v in rows["slow"]["statuses"].items()} == {408: 16}
    assert rows["slow"]["normal_request"] == 200
    assert all(r["served_after"] == 200 and r["rss_peak_mib"] >= r["rss_before_mib"] > 0 for r in rows.values())
    table = (tmp_path / "abuse.md").read_text()
    assert "| kserve-native | oversize: 16 at once declaring 64 MiB bodies | 16× 413 |" in table


@pytest.mark.integration
def test_torchserve_behind_its_authenticating_proxy_keeps_the_limits(trained, tmp_path, monkeypatch):
    """The proxy reads each body before TorchServe: bounded in number (max_inflight) and time (408
    for stalled uploads, which TorchServe alone never answers), oversize refused by its declared size."""
    monkeypatch.setenv("SERVE_BODY_TIMEOUT_S", "2")
    monkeypatch.setenv("SERVE_MAX_INFLIGHT", "20")
    assert abuse.main(["--checkpoint", str(trained), "--out", str(tmp_path), "--runtimes", "torchserve-auth",
                       "--slow-seconds", "6"]) == 0
    rows = {r["case"]: r for r in json.loads((tmp_path / "abuse.json").read_text())["runtimes"]["torchserve-auth"]}
    for case, n in (("max-size", 16), ("max-size ×20", 20)):
        assert {int(k): v for k, v in rows[case]["statuses"].items()} == {200: n}
    assert sum(rows["burst"]["statuses"].values()) == 400 and 503 in map(int, rows["burst"]["statuses"])
    assert set(map(int, rows["burst"]["statuses"])) <= {200, 503}
    assert {int(k): v for k, v in rows["oversize"]["statuses"].items()} == {413: 16}
    assert {int(k): v for k, v in rows["slow"]["statuses"].items()} == {408: 16}
    assert rows["slow"]["normal_request"] == 200
    assert all(r["served_after"] == 200 for r in rows.values())


def test_a_request_that_times_out_counts_as_no_answer_and_a_closed_port_as_closed():
    import socket
    import threading

    held = []
    with socket.socket() as listener:  # accepts, holds the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
        assert abuse.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", b"{}", timeout=0.5) == -2
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert abuse.post(f"http://127.0.0.1:{port}/", b"{}", timeout=2) == -1
