"""A local Kubernetes control plane built from upstream source (make cluster / cluster-stop /
cluster-status / cluster-build).

    python -m scripts.cluster build            # build (or find) the cached binary
    python -m scripts.cluster kserve-build     # build (or find) KServe's controller manager
    python -m scripts.cluster start            # etcd + apiserver + controller-manager + scheduler
    python -m scripts.cluster start --kserve   # ... and KServe's manager with its CRDs, webhooks
    python -m scripts.cluster kserve-start     # KServe's manager into the running control plane
    python -m scripts.cluster kserve-stop      # stop only KServe's manager (webhooks removed)
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

from scripts.cluster import build, certs, kserve
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
    if getattr(args, "kserve", False):
        code = _start_kserve(plane, args.timeout)
        if code:
            return code
    print(f"cluster: export KUBECONFIG={plane.kubeconfig}")
    return 0


def _start_kserve(plane: ControlPlane, timeout: float) -> int:
    try:
        kserve.KServe(plane).start(timeout=timeout)
    except (kserve.KServeError, build.BuildError, certs.CertError) as err:
        print(f"kserve: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_kserve_start(args) -> int:
    plane = ControlPlane(args.state_dir)
    if not plane.running():
        print(f"kserve: no control plane runs from {plane.dir}: `make cluster` first", file=sys.stderr)
        return 1
    return _start_kserve(plane, args.timeout)


def cmd_kserve_stop(args) -> int:
    if not kserve.KServe(ControlPlane(args.state_dir)).stop():
        print("kserve: its manager is not running")
    return 0


def cmd_stop(args) -> int:
    plane = ControlPlane(args.state_dir)
    kserve.KServe(plane).stop()  # first: it unregisters its webhooks while the API server runs
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
    manager = kserve.KServe(plane)
    if manager.load() and manager.load().pid:
        pid = manager.running()
        ok, detail = manager.healthy() if pid else (False, "stopped")
        all_ok &= ok
        print(f"  {kserve.BINARY:24} pid {pid or '-':<7} port {manager.ports['webhook']:<6} "
              f"rss {_mib(manager.memory()):>8}  {'healthy' if ok else 'UNHEALTHY: ' + detail}")
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
    sub.add_parser("kserve-build", help="build KServe's controller manager into the cache",
                   add_help=False)
    for name, helptext in (("start", "start the control plane"), ("stop", "stop it"),
                           ("status", "show its processes and health"),
                           ("kserve-start", "start KServe's manager in the running control plane"),
                           ("kserve-stop", "stop KServe's manager")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
        if name == "start":
            p.add_argument("--free-ports", action="store_true",
                           help="free loopback ports instead of 2379/2380/6443/10257/10259")
            p.add_argument("--timeout", type=float, default=180, help="seconds per component")
            p.add_argument("--kserve", action="store_true",
                           help="also start KServe's controller manager (kserve-start)")
        if name == "kserve-start":
            p.add_argument("--timeout", type=float, default=180, help="seconds to be ready")
        if name == "stop":
            p.add_argument("--purge", action="store_true", help="also remove the state folder")
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "build":
        return build.main(rest)
    if args.cmd == "kserve-build":
        return kserve.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status,
            "kserve-start": cmd_kserve_start, "kserve-stop": cmd_kserve_stop}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
