"""Start or stop TorchServe over the storage layout, in the background.

    python -m scripts.serve start [--store build/serve]   # returns when every model is READY
    python -m scripts.serve stop
    python -m scripts.serve status

Ports come from handlers/settings.py (override with SERVE_* environment variables). With
SERVE_TOKEN_FILE set, every inference call needs `Authorization: Bearer <token>` with a token of
that file (the exporter's proxy, handlers/auth_proxy.py, as in the chart with auth.enabled).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from handlers.settings import AuthSettings, ServingSettings
from scripts.serve.process import process_alive, read_pid, stop_process_group
from scripts.serve.torchserve import TorchServe, TorchServeError, snapshot_models


def print_urls(ts: TorchServe) -> None:
    s = ts.settings
    print(f"TorchServe ready (pid {ts.proc.pid if ts.proc else read_pid(ts.pid_file)}), logs in {ts.run_dir}")
    for name in snapshot_models(ts.config):
        print(f"  predict:    curl -X POST {s.inference_url}/predictions/{name} -T IMAGE")
    print(f"  management: {s.management_url}/models\n  metrics:    {s.metrics_url}")
    print(f"  gRPC:       {s.host}:{s.grpc_inference_port} (inference), "
          f"{s.host}:{s.grpc_management_port} (management)")
    if ts.token_file is not None:
        print(f"  auth:       inference calls need -H 'Authorization: Bearer <token>', a token of {ts.token_file}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--store", type=Path, default=Path("build/serve"), help="storage layout root")
    p.add_argument("--run-dir", type=Path, default=Path("build/run"), help="logs and pid file")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for READY workers")
    args = p.parse_args(argv)
    token_file = AuthSettings.from_env().token_file
    if args.action == "start" and token_file and not Path(token_file).is_file():
        print(f"serve: error: SERVE_TOKEN_FILE={token_file} is not a file (one token per line)", file=sys.stderr)
        return 2
    ts = TorchServe(args.store, ServingSettings.from_env(), args.run_dir,
                    token_file=Path(token_file).resolve() if token_file else None)
    pid = read_pid(ts.pid_file)
    running = pid is not None and process_alive(pid)

    if args.action == "stop":
        if running:
            stop_process_group(pid)
            print(f"TorchServe (pid {pid}) stopped")
        else:
            print("TorchServe is not running")
        ts.pid_file.unlink(missing_ok=True)
        return 0
    if args.action == "status":
        ready = running and ts.ready()
        print(f"TorchServe {'ready' if ready else 'running, not ready' if running else 'not running'}")
        return 0 if ready else 1
    if running:
        print(f"serve: error: TorchServe already running (pid {pid}); run 'make stop' first", file=sys.stderr)
        return 1
    try:
        ts.run_dir.mkdir(parents=True, exist_ok=True)
        ts.start(args.timeout)
    except TorchServeError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 1
    print_urls(ts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
