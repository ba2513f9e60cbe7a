"""Serve the try-it page (scripts/ui/): pick a served model, drop an image, see the top-k.

    python -m scripts.ui.server [--store build/serve] [--api URL] [--protocol torchserve|v1]

The page is static; its browser calls the inference API directly: TorchServe's /predictions (the
image's bytes), or with --protocol v1 KServe v1 `:predict` (the image as a base64 instance), which
the KServe-native runtime serves. A token typed into the page's field goes as `Authorization:
Bearer <token>` (the runtime's SERVE_TOKEN_FILE; kept in the browser tab only). This server only
hands out the files and a config.json (the API base URL, its protocol and the model names of the
store's config.properties, read on every request). It binds 127.0.0.1 on SERVE_UI_PORT (8090).

By default the page calls the local TorchServe of `make serve` (SERVE_* settings). With --api it
calls another endpoint, e.g. a cluster's: that server must then allow this page's origin
(http://127.0.0.1:8090), with SERVE_CORS_ORIGIN when its config is generated here, or
TorchServe's own cors_allowed_origin / TS_CORS_ALLOWED_ORIGIN. Open the page at the printed URL
exactly: http://localhost:8090 is another origin and TorchServe would refuse it.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from handlers.settings import ServingSettings
from scripts.serve.torchserve import TorchServeError, snapshot_models

UI_DIR = Path(__file__).resolve().parent
BIND_HOST = "127.0.0.1"


PROTOCOLS = ("torchserve", "v1")  # TorchServe's /predictions; KServe v1 (the KServe-native runtime)


def page_config(store: Path, api: str, protocol: str = "torchserve") -> dict:
    """What the page needs: where and how to send images, and which models are served."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    models = snapshot_models(Path(store) / "config" / "config.properties")
    return {"api": api.rstrip("/"), "protocol": protocol, "models": sorted(models)}


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(api: str) -> str:
    """Everything from this server only; the one exception is fetch() to the inference API."""
    return "; ".join([
        "default-src 'none'", "script-src 'self'", "style-src 'self'",
        "img-src 'self' blob: data:", f"connect-src 'self' {origin_of(api)}",
        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
    ])


class PageHandler(SimpleHTTPRequestHandler):
    """The files of scripts/ui/ plus a generated /config.json; GET and HEAD only."""

    server_version = "try-it-page"
    store: Path
    api: str
    protocol: str

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # the page follows edits and re-archives
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", content_security_policy(self.api))
        super().end_headers()

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/config.json":
            self.send_config(head=False)
        else:
            super().do_GET()

    def do_HEAD(self) -> None:
        if urlsplit(self.path).path == "/config.json":
            self.send_config(head=True)
        else:
            super().do_HEAD()

    def send_config(self, head: bool) -> None:
        try:
            body, status = json.dumps(page_config(self.store, self.api, self.protocol)), HTTPStatus.OK
        except (OSError, ValueError, KeyError, TorchServeError) as e:
            body, status = json.dumps({"error": f"cannot list the served models: {e}"}), \
                HTTPStatus.SERVICE_UNAVAILABLE
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def list_directory(self, path):  # only the page's own files, no listings
        self.send_error(HTTPStatus.NOT_FOUND)
        return None


def make_server(store: Path, api: str, port: int, host: str = BIND_HOST,
                protocol: str = "torchserve") -> ThreadingHTTPServer:
    origin_of(api)  # reject a malformed --api before serving a page that cannot work
    handler = type("Handler", (PageHandler,), {"store": Path(store).resolve(), "api": api.rstrip("/"),
                                               "protocol": protocol})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(UI_DIR)))
    server.daemon_threads = True
    return server


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # same clean path as Ctrl-C


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("build/serve"),
                   help="storage layout root whose config.properties lists the models")
    p.add_argument("--api", default=None,
                   help="inference base URL the page calls (default: the local TorchServe from "
                        "SERVE_* settings); that server must allow this page's origin (CORS)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="torchserve",
                   help="how the page asks: TorchServe's /predictions, or KServe v1 (the KServe-native "
                        "runtime, e.g. --api http://127.0.0.1:8085 of `make kserve`)")
    args = p.parse_args(argv)
    try:
        settings = ServingSettings.from_env()
        api = args.api or settings.inference_url
        config = page_config(args.store, api, args.protocol)
    except FileNotFoundError as e:
        print(f"ui_server: error: {e} (run `make archive` first)", file=sys.stderr)
        return 1
    except (OSError, ValueError, TorchServeError) as e:
        print(f"ui_server: error: {e}", file=sys.stderr)
        return 1
    try:
        server = make_server(args.store, api, settings.ui_port, protocol=args.protocol)
    except ValueError as e:
        print(f"ui_server: error: --api: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ui_server: error: cannot listen on {BIND_HOST}:{settings.ui_port}: {e.strerror or e} "
              "(another page server running? choose a port with SERVE_UI_PORT)", file=sys.stderr)
        return 1

    url = f"http://{BIND_HOST}:{server.server_address[1]}/"
    print(f"Try-it page: {url}", flush=True)
    print(f"  models: {', '.join(config['models'])}; predictions from {config['api']} ({args.protocol})")
    if url.rstrip("/") != settings.allowed_origin:
        print(f"  warning: with these settings the servers allow the origin {settings.allowed_origin} "
              f"only, not this page's {url.rstrip('/')}: browsers will refuse its answers "
              "(SERVE_CORS_ORIGIN)", file=sys.stderr)
    if args.api:
        print(f"  ({config['api']} must allow this page's origin {url.rstrip('/')}: TorchServe's "
              "cors_allowed_origin, SERVE_CORS_ORIGIN for both runtimes here; Ctrl-C stops this page)", flush=True)
    else:
        print("  (the models are served by `make serve`; Ctrl-C stops this page)", flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("Try-it page stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
