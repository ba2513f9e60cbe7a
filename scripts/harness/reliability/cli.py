"""python -m scripts.harness.reliability [--quick] [--record docs/reliability.md] ..."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from scripts.harness import reliability
from scripts.harness.reliability.servers import RUNTIMES
from scripts.harness.reliability.settings import ReliabilitySettings
from scripts.harness.reliability.suite import run_suite
from scripts.serve.settings import DEFAULT_CHECKPOINT


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=reliability.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("build/reliability"), help="results, store and logs")
    p.add_argument("--quick", action="store_true", help="the fast subset (no rollout, short load)")
    p.add_argument("--load-seconds", type=float, help="held-load duration (default 60; quick 5)")
    p.add_argument("--runtime", action="append", choices=RUNTIMES,
                   help="run the scenarios on this runtime only (repeatable; default: both, TorchServe first)")
    p.add_argument("--record", type=Path, help="also write the Markdown results here (e.g. docs/reliability.md)")
    p.add_argument("--note", default="", help="text put under the header of the Markdown results")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    rs = ReliabilitySettings.quick() if args.quick else ReliabilitySettings()
    if args.load_seconds:
        rs = replace(rs, load_seconds=args.load_seconds)
    if args.runtime:
        rs = replace(rs, runtimes=tuple(dict.fromkeys(args.runtime)))
    if not args.checkpoint.exists():
        print(f"reliability: error: no checkpoint {args.checkpoint} (make train)", file=sys.stderr)
        return 2
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    if "--note" in shown:  # the note is printed below the header already
        i = shown.index("--note")
        del shown[i:i + 2]
    command = "python -m scripts.harness.reliability " + " ".join(shown)
    suite = run_suite(args.checkpoint, args.data_dir, args.out, rs, "quick" if args.quick else "full",
                      command.strip(), not args.no_progress, args.note, args.record)
    print(f"reliability: {'PASS' if suite.passed else 'FAIL'} in {suite.seconds:.0f} s; results in "
          f"{args.out / 'results.md'}" + (f" and {args.record}" if args.record else ""))
    return 0 if suite.passed else 1
