"""A local Kubernetes control plane built from upstream source (make cluster / cluster-stop /
cluster-status / cluster-build).

    python -m scripts.cluster build            # build (or find) the cached binary
    python -m scripts.cluster start            # etcd + apiserver + controller-manager + scheduler
    python -m scripts.cluster status           # which run, are they healthy, memory
    python -m scripts.cluster stop [--purge]   # stop by PID (--purge: remove the state folder)

The state folder (default build/cluster) holds the kubeconfig:
`KUBECONFIG=build/cluster/kubeconfig .tools/bin/kubectl get ns`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from scripts.cluster import build, certs
from scripts.cluster.control_plane import ORDER, ClusterError, ControlPlane, pick_free_ports

DEFAULT_STATE = Path("build/cluster")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def cmd_start(args) -> int:
    plane = ControlPlane(args.state_dir, ports=pick_free_ports() if args.free_ports else None)
    already = set(plane.running()) == set(ORDER)
    t0 = time.monotonic()
    try:
        state = plane.start(timeout=args.timeout)
    except (ClusterError, build.BuildError, certs.CertError) as err:
        print(f"cluster: error: {err}", file=sys.stderr)
        return 1
    if already:
        print(f"cluster: already running at {plane.server}")
    else:
        print(f"cluster: control plane ready in {time.monotonic() - t0:.1f} s "
              f"(processes {state.start_seconds:.1f} s) at {plane.server}")
    print(f"cluster: export KUBECONFIG={plane.kubeconfig}")
    return 0


def cmd_stop(args) -> int:
    plane = ControlPlane(args.state_dir)
    stopped = plane.stop()
    if not stopped:
        print(f"cluster: nothing running from {plane.dir}")
    if args.purge and plane.dir.exists():
        shutil.rmtree(plane.dir)
        print(f"cluster: removed {plane.dir}")
    return 0


def cmd_status(args) -> int:
    plane = ControlPlane(args.state_dir)
    state = plane.load()
    running = plane.running()
    if state is None or not running:
        print(f"cluster: not running (state folder {plane.dir})")
        return 3
    memory = plane.memory()
    all_ok = True
    for name in ORDER:
        if name not in running:
            print(f"  {name:24} stopped")
            all_ok = False
            continue
        ok, detail = plane.healthy(name)
        all_ok &= ok
        print(f"  {name:24} pid {running[name]:<7} port {state.ports[name]:<6} "
              f"rss {_mib(memory.get(name, 0)):>8}  {'healthy' if ok else 'UNHEALTHY: ' + detail}")
    print(f"  total rss {_mib(sum(memory.values()))}; binaries {state.bin_dir}")
    print(f"cluster: {'ready' if all_ok else 'NOT ready'} at {plane.server}; "
          f"KUBECONFIG={plane.kubeconfig}")
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the binary into the cache (no-op when cached)",
                   add_help=False)
    for name, helptext in (("start", "start the control plane"), ("stop", "stop it"),
                           ("status", "show its processes and health")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
        if name == "start":
            p.add_argument("--free-ports", action="store_true",
                           help="free loopback ports instead of 2379/2380/6443/10257/10259")
            p.add_argument("--timeout", type=float, default=180, help="seconds per component")
        if name == "stop":
            p.add_argument("--purge", action="store_true", help="also remove the state folder")
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "build":
        return build.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
