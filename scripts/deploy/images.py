"""Container images of the chart's two runtimes. The names and tags come from the chart's values
(images.<runtime>.repository / tag / gpuTag), the Dockerfiles from charts/image-classifier/docker/:
this is the one place that ties them together, for `make images`, the pod tests, scripts/deploy/kind_e2e.sh
and the docs.

    python -m scripts.deploy.images                       # print the build commands
    python -m scripts.deploy.images --build [--push]      # run them (podman, else docker)
    python -m scripts.deploy.images --build --no-image-registry
                                                   # base image from Debian's packages, torch from
                                                   # PyPI: for machines that reach package registries
                                                   # but no image registry (`make images` here)
    python -m scripts.deploy.images --gpu ...             # the GPU tags (CUDA torch wheels)
    python -m scripts.deploy.images -f my-values.yaml     # the names your own values file sets
    python -m scripts.deploy.images --names               # only the image names, one a line (kind load)

Builds run from the repository root (the build context holds requirements.txt, handlers/, ...).
Both Dockerfiles start with the same lines up to the torch install, so the engine builds and
stores that layer (about 5.8 GB with PyPI's CUDA wheels) once for both images.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "image-classifier"
DOCKERFILES = {  # values.yaml images.<key> → the Dockerfile that builds it
    "torchserve": CHART / "docker" / "Dockerfile.torchserve",
    "kserveNative": CHART / "docker" / "Dockerfile.kserve-native",
}
GPU_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
PYPI_INDEX = "https://pypi.org/simple"
# Where pip reads its site configuration inside a build container, and the CA bundle beside it.
BUILD_PIP_CONF, BUILD_PIP_CA = "/etc/pip.conf", "/etc/pip-build-ca.crt"


def image_names(values: Path | None = None, gpu: bool = False) -> dict[str, str]:
    """values key → repository:tag, from the chart's values.yaml overlaid with `values`."""
    images = yaml.safe_load((CHART / "values.yaml").read_text())["images"]
    if values is not None:
        for key, override in (yaml.safe_load(Path(values).read_text()) or {}).get("images", {}).items():
            if isinstance(override, dict):
                images[key] = {**images.get(key, {}), **override}
    return {key: f"{images[key]['repository']}:{images[key]['gpuTag' if gpu else 'tag']}" for key in DOCKERFILES}


@dataclass(frozen=True)
class BuildOptions:
    engine: str = "docker"
    base_image: str | None = None     # None: the Dockerfiles' own default (python:3.11-slim)
    torch_index: str | None = None    # None: the Dockerfiles' default (PyTorch's CPU wheel index)
    gpu: bool = False
    mounts: tuple[str, ...] = ()      # build-time volumes (podman): host pip settings, never in a layer
    flags: tuple[str, ...] = ()       # the engine's own build flags (podman's ulimits)


def build_commands(values: Path | None = None, opts: BuildOptions = BuildOptions(),
                   push: bool = False) -> list[list[str]]:
    cmds = []
    torch_index = opts.torch_index or (GPU_TORCH_INDEX if opts.gpu else None)
    for key, image in image_names(values, opts.gpu).items():
        cmd = [opts.engine, "build", *opts.flags, "-f", str(DOCKERFILES[key].relative_to(REPO)), "-t", image]
        if opts.base_image:
            cmd += ["--build-arg", f"BASE_IMAGE={opts.base_image}"]
        if torch_index:
            cmd += ["--build-arg", f"TORCH_INDEX={torch_index}"]
        for mount in opts.mounts:
            cmd += ["-v", mount]
        cmds.append([*cmd, "."])
        if push:
            cmds.append([opts.engine, "push", image])
    return cmds


def host_pip_mounts(conf_dir: Path, env: dict[str, str] = os.environ) -> tuple[str, ...]:
    """Behind a TLS-intercepting proxy pip needs the host's CA bundle (PIP_CERT) inside the build
    too: a pip.conf naming it (and any PIP_INDEX_URL) is mounted read-only into each RUN step, so no
    layer and no cache key holds it. Nothing when the host's pip needs no such settings."""
    settings = {"cert": BUILD_PIP_CA if env.get("PIP_CERT") else None,
                "index-url": env.get("PIP_INDEX_URL"), "extra-index-url": env.get("PIP_EXTRA_INDEX_URL"),
                "trusted-host": env.get("PIP_TRUSTED_HOST")}
    settings = {k: v for k, v in settings.items() if v}
    if not settings:
        return ()
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    mounts = [f"{conf}:{BUILD_PIP_CONF}:ro"]
    if "cert" in settings:
        mounts.append(f"{env['PIP_CERT']}:{BUILD_PIP_CA}:ro")
    return tuple(mounts)


def registry_free_options(engine, gpu: bool = False) -> BuildOptions:
    """No image registry: the base from Debian's packages, torch (CUDA wheels) from PyPI."""
    from scripts.containers import base_images

    return BuildOptions(engine=engine.name, base_image=base_images.debian_python(engine),
                        torch_index=PYPI_INDEX, gpu=gpu, mounts=engine_mounts(engine), flags=engine.build_flags)


def engine_mounts(engine) -> tuple[str, ...]:
    from scripts.containers.engine import CONF_DIR

    return host_pip_mounts(CONF_DIR) if engine.name == "podman" else ()


def build(values: Path | None = None, gpu: bool = False, push: bool = False,
          registry_free: bool = True, quiet: bool = False) -> dict[str, str]:
    """Build both images (layers cached by the engine); returns values key → image name."""
    from scripts.containers.engine import detect

    engine = detect()
    if registry_free:
        opts = registry_free_options(engine, gpu)
    else:
        opts = BuildOptions(engine=engine.name, gpu=gpu, mounts=engine_mounts(engine), flags=engine.build_flags)
    names = image_names(values, gpu)
    for cmd in build_commands(values, opts, push):
        started = time.monotonic()
        print("[images] +", shlex.join(cmd), flush=True)
        proc = engine.run(*cmd[1:], check=False, capture=quiet)
        if proc.returncode != 0:
            tail = (proc.stdout or "")[-3000:] + (proc.stderr or "")[-3000:] if quiet else ""
            raise SystemExit(f"images: error: {shlex.join(cmd)} failed ({proc.returncode})\n{tail}")
        if cmd[1] == "build":
            image = cmd[cmd.index("-t") + 1]
            print(f"[images] {image}: {time.monotonic() - started:.0f} s, "
                  f"{engine.image_size(image) / 1e9:.2f} GB", flush=True)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--values", type=Path, help="a values file whose images.* override the chart's")
    p.add_argument("--gpu", action="store_true", help="the gpuTag images (CUDA torch wheels)")
    p.add_argument("--build", action="store_true", help="run the builds (default: print them)")
    p.add_argument("--push", action="store_true", help="push after building")
    p.add_argument("--no-image-registry", action="store_true",
                   help="base image from Debian's packages (debootstrap) and torch from PyPI")
    p.add_argument("--names", action="store_true", help="print the image names only")
    args = p.parse_args(argv)
    if args.names:
        print("\n".join(image_names(args.values, args.gpu).values()))
        return 0
    if not args.build:
        opts = BuildOptions(gpu=args.gpu, torch_index=PYPI_INDEX if args.no_image_registry else None,
                            base_image="<debian-python base>" if args.no_image_registry else None)
        print("\n".join(shlex.join(c) for c in build_commands(args.values, opts, args.push)))
        return 0
    from scripts.containers.engine import EngineError
    try:
        build(args.values, args.gpu, args.push, registry_free=args.no_image_registry)
    except EngineError as e:
        print(f"images: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
