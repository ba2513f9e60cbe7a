"""Container images of the chart's two runtimes. The names and tags come from the chart's values
(images.<runtime>.repository / tag / gpuTag), the Dockerfiles from charts/image-classifier/docker/:
this is the one place that ties them together, for `make images`, scripts/kind_e2e.sh and the docs.

    python -m scripts.images                     # print the docker build commands (no Docker needed)
    python -m scripts.images --build [--push]    # run them (needs a Docker engine; CI has none)
    python -m scripts.images --gpu ...           # the GPU tags (CUDA torch wheels)
    python -m scripts.images -f my-values.yaml   # the names your own values file sets
    python -m scripts.images --names             # only the image names, one a line (kind load)

Builds run from the repository root (the build context holds requirements.txt, handlers/, ...).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "image-classifier"
DOCKERFILES = {  # values.yaml images.<key> → the Dockerfile that builds it
    "torchserve": CHART / "docker" / "Dockerfile.torchserve",
    "kserveNative": CHART / "docker" / "Dockerfile.kserve-native",
}
GPU_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"


def image_names(values: Path | None = None, gpu: bool = False) -> dict[str, str]:
    """values key → repository:tag, from the chart's values.yaml overlaid with `values`."""
    images = yaml.safe_load((CHART / "values.yaml").read_text())["images"]
    if values is not None:
        for key, override in (yaml.safe_load(Path(values).read_text()) or {}).get("images", {}).items():
            if isinstance(override, dict):
                images[key] = {**images.get(key, {}), **override}
    return {key: f"{images[key]['repository']}:{images[key]['gpuTag' if gpu else 'tag']}" for key in DOCKERFILES}


def build_commands(values: Path | None = None, gpu: bool = False, push: bool = False) -> list[list[str]]:
    cmds = []
    for key, image in image_names(values, gpu).items():
        cmd = ["docker", "build", "-f", str(DOCKERFILES[key].relative_to(REPO)), "-t", image]
        if gpu:
            cmd += ["--build-arg", f"TORCH_INDEX={GPU_TORCH_INDEX}"]
        cmds.append([*cmd, "."])
        if push:
            cmds.append(["docker", "push", image])
    return cmds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--values", type=Path, help="a values file whose images.* override the chart's")
    p.add_argument("--gpu", action="store_true", help="the gpuTag images (CUDA torch wheels)")
    p.add_argument("--build", action="store_true", help="run the builds (default: print them)")
    p.add_argument("--push", action="store_true", help="push after building")
    p.add_argument("--names", action="store_true", help="print the image names only")
    args = p.parse_args(argv)
    if args.names:
        print("\n".join(image_names(args.values, args.gpu).values()))
        return 0
    cmds = build_commands(args.values, args.gpu, args.push)
    if not args.build:
        print("\n".join(shlex.join(c) for c in cmds))
        return 0
    problem = None
    if shutil.which("docker") is None:
        problem = "docker not found"
    elif subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        problem = "no Docker engine answers (`docker info` fails)"
    if problem:
        print(f"images: error: {problem}. Building images needs a Docker engine (CI has none);\n"
              "run these on a machine with Docker, from the repository root:\n  "
              + "\n  ".join(shlex.join(c) for c in cmds), file=sys.stderr)
        return 2
    for cmd in cmds:
        print("+", shlex.join(cmd), flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print(f"images: error: {shlex.join(cmd)} failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
