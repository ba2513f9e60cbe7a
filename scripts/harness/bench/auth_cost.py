"""What bearer-token authentication costs the KServe-native runtime (handlers/auth.py, the chart's
`auth`): one model served by three runtimes at once, without authentication (the default), with a
token file of one token, and with a file of 64 tokens (each request is compared with every one, in
constant time). The clients send a good token to the authenticated runtimes. Raw image bytes on
the v1 route at each concurrency, interleaved rounds, medians; each answer checked. Before the
rounds, a request without its token must get 401 from each authenticated runtime. Writes
<out>/auth-cost.{md,json}.

    python -m scripts.harness.bench.auth_cost [--checkpoint runs/fashion-mnist/model.pt] [--repeats 5]
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

from handlers.auth import bearer
from scripts.harness import machine
from scripts.harness.bench import models, targets, variants
from scripts.serve import archive
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from scripts.serve.settings import DEFAULT_MODEL

VARIANTS = {"no authentication": 0, "bearer token, 1 in the file": 1, "bearer token, 64 in the file": 64}


def markdown(record: dict) -> str:
    refused = ", ".join(f"{name} {status}" for name, status in record["refused_without_token"].items())
    return variants.markdown("What bearer-token authentication costs the KServe-native runtime", record,
                             [f"- the authenticated runtimes refused a request without the token: {refused}"],
                             "no authentication")


def main(argv: list[str] | None = None) -> int:
    args = variants.get_args_parser("python -m scripts.harness.bench.auth_cost", __doc__).parse_args(argv)
    if not args.checkpoint.exists():
        print(f"auth_cost: error: no checkpoint at {args.checkpoint}: run `make train` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="auth-cost-"))
    started, host, refused = time.time(), machine.describe(), {}
    try:
        images = models.fashion_mnist_images(args.data_dir, 32)
        archive.archive(args.checkpoint, work / "store", DEFAULT_MODEL)
        with contextlib.ExitStack() as stack:
            plan = []
            for name, count in VARIANTS.items():
                run = work / f"tokens-{count}"
                run.mkdir()
                env, headers = None, None
                if count:
                    tokens = [secrets.token_hex(24) for _ in range(count)]
                    (run / "tokens").write_text("\n".join(tokens) + "\n")
                    env, headers = {"SERVE_TOKEN_FILE": str(run / "tokens")}, bearer(tokens[-1])  # the last: every compare
                rt = stack.enter_context(targets.Stopper(KServeRuntime(
                    work / "store" / "model-store", run, *free_ports(2), extra_env=env).start(timeout=240)))
                if count:
                    refused[name] = requests.post(f"{rt.url}/v1/models/{DEFAULT_MODEL}:predict", data=images[0],
                                                  headers={"Content-Type": "image/png"}, timeout=30).status_code
                    if refused[name] != 401:
                        print(f"auth_cost: error: {name}: a request without the token got {refused[name]}, not 401",
                              file=sys.stderr)
                        return 1
                plan.append((name, targets.kserve_rest_client(rt, DEFAULT_MODEL, images, headers),
                             lambda rt=rt: targets.group_cpu_seconds(rt.proc.pid)))
            send = plan[0][1]()
            expected = [send(i) for i in range(len(images))]
            points = variants.interleaved(plan, expected, args.concurrency, args.repeats, args.duration, "auth cost")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = variants.record("scripts.harness.bench.auth_cost", argv, started, host, args, len(images), points,
                             refused_without_token=refused)
    variants.write(args.out, "auth-cost", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
