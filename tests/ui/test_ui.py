"""The try-it page in a real browser (Debian's chromium driven by Playwright) against a real
TorchServe serving the real `.mar`, and against the KServe-native runtime over KServe v1 with
bearer tokens, with the page served by `python -m scripts.ui.server`.

This module starts its own TorchServe: the page's origin (127.0.0.1:<ui_port>) must be the one
TorchServe allows, and the session fixture's settings keep the default ui_port 8090, which a
`make ui` on this machine may hold. Screenshots go to the `artifacts` folder ($TEST_ARTIFACTS or pytest's
temporary folder); docs/ui-screenshot.png (the README's picture) is written only with
UPDATE_UI_SCREENSHOT=1."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from scripts.ui import server as ui_server
from scripts.serve.process import ServerProcess
from handlers.settings import ServingSettings
from handlers.auth import bearer
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.torchserve import TorchServe, snapshot_models
from scripts.serve.process import free_ports
from scripts.serve.settings import loopback_settings
from tests.helpers import MODEL_NAME

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = REPO / "docs" / "ui-screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # a prediction on a busy 2-core machine can take a few seconds


# --- helpers ---------------------------------------------------------------------------------

def serve_env(settings: ServingSettings) -> dict[str, str]:
    """The environment `make serve` and `make ui` would share: every setting as SERVE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value != "":
            env[f"SERVE_{f.name.upper()}"] = str(value)
    return env


class UiServer(ServerProcess):
    """`python -m scripts.ui.server` in its own process group, stopped by PID."""

    name = "ui_server"
    poll_seconds = 0.1

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        super().__init__(log.parent, log.name)
        self.args, self._env = args, env
        self.url = f"http://127.0.0.1:{env['SERVE_UI_PORT']}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "scripts.ui.server", *self.args]

    def env(self) -> dict[str, str]:
        return self._env

    def cwd(self) -> Path:
        return REPO

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/config.json", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def interrupt(self, timeout: float = 10) -> int:
        """Ctrl-C, as in a terminal."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)


def drop_file(page: Page, selector: str, name: str, data: bytes, mime: str) -> None:
    """What a drag-and-drop from the desktop delivers: a drop event whose DataTransfer holds a File."""
    transfer = page.evaluate_handle(
        """([b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: mime }));
            return dt;
        }""", [base64.b64encode(data).decode(), name, mime])
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def served_answer(settings: ServingSettings, body: bytes, model: str = MODEL_NAME) -> requests.Response:
    return requests.post(f"{settings.inference_url}/predictions/{model}", data=body, timeout=60)


def screenshot(page: Page, name: str, artifacts: Path) -> Path:
    path = artifacts / name
    page.screenshot(path=str(path), full_page=True)
    return path


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ui_settings() -> ServingSettings:
    return dataclasses.replace(loopback_settings(), ui_port=free_ports(1)[0])


@pytest.fixture(scope="module")
def ui_torchserve(store, ui_settings, tmp_path_factory):
    """A real TorchServe whose CORS allows this module's page origin (127.0.0.1:<free port>)."""
    ts = TorchServe(store, ui_settings, tmp_path_factory.mktemp("ui-ts-run"))
    ts.start(timeout=180)
    yield ts
    ts.stop()


@pytest.fixture(scope="module")
def page_server(store, ui_torchserve, tmp_path_factory):
    """The page, served by the CLI with the same SERVE_* settings as the TorchServe (no --api)."""
    log = tmp_path_factory.mktemp("ui-server") / "ui_server.out"
    server = UiServer(["--store", str(store)], serve_env(ui_torchserve.settings), log).start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: run scripts/setup.sh (or apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 640}, device_scale_factor=1)
    page = context.new_page()
    page.errors = []  # uncaught exceptions in the page's script
    page.requested = []  # every URL the page asked for
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.requested.append(r.url))
    yield page
    context.close()


def assert_only_own_origins(page: Page, *origins: str) -> None:
    """No CDN, no external URL: every request goes to the page's server or the inference API."""
    for url in page.requested:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob"):
            continue
        assert f"{parts.scheme}://{parts.netloc}" in origins, f"unexpected request to {url}"


# --- the page against the real TorchServe ------------------------------------------------------

def test_page_shows_the_served_top_k_for_a_real_image(page, page_server, ui_torchserve, samples, store, artifacts):
    settings = ui_torchserve.settings
    page.goto(page_server.url + "/")
    expect(page).to_have_title("Try the image classifier")
    model = page.get_by_label("Model")
    expect(model).to_be_enabled()
    served_models = sorted(snapshot_models(store / "config" / "config.properties"))
    assert model.locator("option").all_inner_texts() == served_models
    expect(page.locator("#api")).to_have_text(settings.inference_url)

    out_dir, listed = samples
    sample = listed[0]
    image = out_dir / sample["file"]
    expected = served_answer(settings, image.read_bytes()).json()

    model.select_option(MODEL_NAME)
    page.get_by_label("Choose an image").set_input_files(image)
    rows = page.locator("#topk li")
    expect(rows).to_have_count(len(expected), timeout=WAIT_MS)
    assert page.locator("#topk .label").all_inner_texts() == list(expected)
    top1 = next(iter(expected))
    expect(rows.first).to_have_class("best")
    expect(page.get_by_role("status")).to_contain_text(top1)

    # One bar per label, as long as its probability (fills are fractions of the same track).
    probs = [float(v) for v in page.locator("#topk .fill").evaluate_all(
        "els => els.map((e) => e.dataset.probability)")]
    assert probs == pytest.approx(list(expected.values()), abs=1e-5)
    widths = page.locator("#topk .bar").evaluate_all(
        "bars => bars.map((b) => [b.firstElementChild.getBoundingClientRect().width, b.getBoundingClientRect().width])")
    for (fill, track), p in zip(widths, expected.values()):
        assert fill == pytest.approx(max(p * track, 2), abs=1.5)  # 2 px minimum keeps tiny bars visible

    expect(page.locator("#latency")).to_have_text(re.compile(r"^Latency: \d+(\.\d)? ms "))
    preview = page.get_by_role("img", name=f"Preview of {sample['file']}")
    expect(preview).to_be_visible()
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [28, 28]
    expect(page.locator("#preview-caption")).to_contain_text("28×28 px")
    expect(page.get_by_role("alert")).to_be_hidden()

    shot = screenshot(page, "ui.png", artifacts)
    if os.environ.get("UPDATE_UI_SCREENSHOT") == "1":  # the README's picture, on request only
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # Drag and drop of another real image: the page follows the server again.
    other = listed[1]
    body = (out_dir / other["file"]).read_bytes()
    expected_other = served_answer(settings, body).json()
    drop_file(page, "#drop", other["file"], body, "image/png")
    expect(page.get_by_role("img", name=f"Preview of {other['file']}")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#topk .label").first).to_have_text(next(iter(expected_other)), timeout=WAIT_MS)
    assert page.locator("#topk .label").all_inner_texts() == list(expected_other)

    # Every other served model (e.g. "imagenet"): choosing it re-asks about the same image.
    for name in served_models:
        if name == MODEL_NAME:
            continue
        expected_here = served_answer(settings, body, name).json()
        model.select_option(name)
        expect(page.get_by_role("status")).to_contain_text(f"{name}: most likely", timeout=WAIT_MS)
        assert page.locator("#topk .label").all_inner_texts() == list(expected_here)
        screenshot(page, f"ui-{name}.png", artifacts)

    assert page.errors == []
    assert_only_own_origins(page, page_server.url, settings.inference_url)


def test_page_shows_the_servers_error_for_a_non_image(page, page_server, ui_torchserve, artifacts):
    settings = ui_torchserve.settings
    body = b"these are notes, not pixels\n"
    rejected = served_answer(settings, body)
    assert rejected.status_code == 400

    page.goto(page_server.url + "/")
    expect(page.get_by_label("Model")).to_be_enabled()
    page.get_by_label("Choose an image").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": body}])
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible(timeout=WAIT_MS)
    expect(alert).to_contain_text("not an image")
    expect(alert).to_contain_text(f"(HTTP 400): {rejected.json()['error']}")
    expect(page.locator("#topk li")).to_have_count(0)
    expect(page.locator("#latency")).to_have_text(re.compile(r"^Latency: \d+(\.\d)? ms "))
    expect(page.locator("#preview-caption")).to_contain_text("cannot display this file")
    screenshot(page, "ui-error.png", artifacts)

    assert page.errors == []
    assert_only_own_origins(page, page_server.url, settings.inference_url)


# --- the page against the KServe-native runtime, KServe v1, with a bearer token -------------------

TOKEN = "page-token-5d1e"


@pytest.fixture(scope="module")
def guarded_runtime(store, tmp_path_factory):
    """The runtime asking for TOKEN and allowing the origin of a page on a port of its own."""
    run = tmp_path_factory.mktemp("ui-kserve")
    (run / "tokens").write_text(TOKEN + "\n")
    ui_port = free_ports(1)[0]
    rt = KServeRuntime(store / "model-store", run, *free_ports(2), extra_env={
        "SERVE_TOKEN_FILE": str(run / "tokens"), "SERVE_CORS_ORIGIN": f"http://127.0.0.1:{ui_port}"}).start()
    yield rt, ui_port
    rt.stop()


@pytest.fixture(scope="module")
def v1_page_server(store, guarded_runtime, ui_settings, tmp_path_factory):
    rt, ui_port = guarded_runtime
    log = tmp_path_factory.mktemp("ui-server-v1") / "ui_server.out"
    env = serve_env(dataclasses.replace(ui_settings, ui_port=ui_port, cors_origin=""))
    server = UiServer(["--store", str(store), "--api", rt.url, "--protocol", "v1"], env, log).start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


def assert_token_asked_then_used(page: Page, page_url: str, api: str, server: str, image: Path, refused: dict,
                                 expected: dict, artifacts: Path, shot: str) -> None:
    """The page without a token shows the server's 401 and asks for one; typed in, the same image
    gets the server's own top-k; the token stays with the tab."""
    page.goto(page_url + "/")
    expect(page.locator("#server")).to_have_text(server)
    expect(page.locator("#api")).to_have_text(api)
    expect(page.get_by_label("Model")).to_be_enabled()
    page.get_by_label("Model").select_option(MODEL_NAME)
    page.get_by_label("Choose an image").set_input_files(image)
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible(timeout=WAIT_MS)
    expect(alert).to_contain_text(f"(HTTP 401): {refused['error']}")
    expect(page.get_by_role("status")).to_contain_text("asks for a bearer token")
    screenshot(page, f"{shot}-token-missing.png", artifacts)

    token = page.get_by_label("Bearer token")
    token.fill(TOKEN)
    token.press("Tab")  # the change event: the same image is asked about again, with the token
    expect(page.locator("#topk li")).to_have_count(len(expected), timeout=WAIT_MS)
    assert page.locator("#topk .label").all_inner_texts() == list(expected)
    expect(alert).to_be_hidden()
    screenshot(page, f"{shot}.png", artifacts)

    page.reload()  # the token stays with the tab (sessionStorage), not in any URL or cookie
    expect(page.get_by_label("Bearer token")).to_have_value(TOKEN)
    assert page.errors == []
    assert_only_own_origins(page, page_url, api)


def test_page_asks_for_the_token_then_shows_the_runtimes_top_k(page, v1_page_server, guarded_runtime, samples,
                                                                artifacts):
    rt, _ = guarded_runtime
    out_dir, listed = samples
    image = out_dir / listed[0]["file"]
    body = {"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}
    v1 = f"{rt.url}/v1/models/{MODEL_NAME}:predict"
    refused = requests.post(v1, json=body, timeout=60)
    assert refused.status_code == 401
    expected = requests.post(v1, json=body, headers=bearer(TOKEN), timeout=60).json()["predictions"][0]
    assert_token_asked_then_used(page, v1_page_server.url, rt.url, "the KServe-native runtime (KServe v1)", image,
                                 refused.json(), expected, artifacts, "ui-v1")


@pytest.fixture(scope="module")
def guarded_torchserve(store, tmp_path_factory):
    """TorchServe behind its exporter's token check, allowing the origin of a page on a port of its own."""
    run = tmp_path_factory.mktemp("ui-ts-auth")
    (run / "tokens").write_text(TOKEN + "\n")
    settings = dataclasses.replace(loopback_settings(), ui_port=free_ports(1)[0])
    ts = TorchServe(store, settings, run, token_file=run / "tokens").start(timeout=180)
    yield ts
    ts.stop()


def test_page_asks_torchserve_for_the_token_too(page, guarded_torchserve, store, samples, artifacts, tmp_path):
    ts = guarded_torchserve
    log = tmp_path / "ui_server.out"
    out_dir, listed = samples
    image = out_dir / listed[0]["file"]
    native = f"{ts.settings.inference_url}/predictions/{MODEL_NAME}"
    refused = requests.post(native, data=image.read_bytes(), timeout=60)
    assert refused.status_code == 401
    expected = requests.post(native, data=image.read_bytes(), headers=bearer(TOKEN), timeout=60).json()
    server = UiServer(["--store", str(store)], serve_env(ts.settings), log).start(timeout=90)
    try:
        assert_token_asked_then_used(page, server.url, ts.settings.inference_url, "TorchServe", image,
                                     refused.json(), expected, artifacts, "ui-torchserve")
    finally:
        server.stop()


def test_the_runtime_answers_only_the_allowed_origins_preflight(guarded_runtime):
    """The browser's preflight carries no token: the runtime's CORS answers it before
    authentication, for the page's origin only."""
    rt, ui_port = guarded_runtime
    asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    v1 = f"{rt.url}/v1/models/{MODEL_NAME}:predict"
    ok = requests.options(v1, headers={"Origin": f"http://127.0.0.1:{ui_port}", **asked}, timeout=10)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == f"http://127.0.0.1:{ui_port}"
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    other = requests.options(v1, headers={"Origin": "http://evil.example", **asked}, timeout=10)
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


# --- the CLI on its own (no TorchServe needed) --------------------------------------------------

def write_store(root: Path, models: dict[str, list[str]]) -> Path:
    """A storage layout whose config lists `models` (the page reads only the model_snapshot line)."""
    snapshot = {"name": "startup.cfg", "modelCount": sum(map(len, models.values())),
                "models": {m: {v: {"marName": f"{m}.mar"} for v in vs} for m, vs in models.items()}}
    config = root / "config" / "config.properties"
    config.parent.mkdir(parents=True)
    config.write_text(f"inference_address=http://127.0.0.1:8080\nmodel_snapshot={json.dumps(snapshot)}\n")
    return root


def test_cli_lists_every_model_points_at_api_and_stops_on_ctrl_c(browser, tmp_path):
    store = write_store(tmp_path / "store", {"imagenet": ["1.0"], MODEL_NAME: ["1.0", "2.0"]})
    port, closed_port = free_ports(2)
    api = f"http://127.0.0.1:{closed_port}"  # e.g. a cluster endpoint; nothing listens here
    env = serve_env(dataclasses.replace(ServingSettings(), ui_port=port, cors_origin=f"http://127.0.0.1:{port}"))
    server = UiServer(["--store", str(store), "--api", api + "/"], env, tmp_path / "ui.out").start(timeout=90)
    try:
        config = requests.get(f"{server.url}/config.json", timeout=5)
        assert config.json() == {"api": api, "protocol": "torchserve", "models": ["fashion-mnist", "imagenet"]}
        assert f"connect-src 'self' {api};" in config.headers["content-security-policy"]
        assert requests.get(f"{server.url}/", timeout=5).headers["content-type"].startswith("text/html")
        assert requests.get(f"{server.url}/nope.js", timeout=5).status_code == 404
        assert requests.post(f"{server.url}/config.json", timeout=5).status_code == 501

        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url + "/")
        expect(page.get_by_label("Model").locator("option")).to_have_text(["fashion-mnist", "imagenet"])
        page.get_by_label("Model").select_option("imagenet")
        page.get_by_label("Choose an image").set_input_files(
            files=[{"name": "x.png", "mimeType": "image/png", "buffer": b"\x89PNG"}])
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text(f"Could not reach {api}/predictions/imagenet", timeout=WAIT_MS)
        expect(alert).to_contain_text(server.url)  # names the origin the endpoint must allow
        context.close()

        assert server.interrupt() == 0
        out = server.output()
        assert f"Try-it page: {server.url}/" in out and "Try-it page stopped" in out
        assert "Traceback" not in out
    finally:
        server.stop()


def test_cli_fails_clearly_without_a_store_or_a_free_port(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SERVE_UI_PORT", str(free_ports(1)[0]))
    assert ui_server.main(["--store", str(tmp_path / "none")]) == 1
    assert "make archive" in capsys.readouterr().err

    store = write_store(tmp_path / "store", {MODEL_NAME: ["1.0"]})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("SERVE_UI_PORT", str(taken.getsockname()[1]))
        assert ui_server.main(["--store", str(store)]) == 1
    assert "SERVE_UI_PORT" in capsys.readouterr().err
    assert ui_server.main(["--store", str(store), "--api", "cluster.example:8080"]) == 1
    assert "not an http(s) URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        ui_server.main(["--store", str(store), "--protocol", "grpc"])
    assert stopped.value.code == 2 and "invalid choice: 'grpc'" in capsys.readouterr().err
