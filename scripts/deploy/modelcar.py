"""KServe modelcar images: one model's storage layout in an OCI image, for `storageUri: oci://...`
(KServe's "modelcar" mode: the image runs as a sidecar beside the runtime and its /models is reached
through the shared process namespace as /mnt/models, with no storage initializer and no claim).

    python -m scripts.deploy.modelcar build/modelcar/fashion-mnist --model fashion-mnist [--push]
    python -m scripts.deploy.modelcar LAYOUT --model NAME --print        # only the build command

The image is <images.modelcar.repository>/<model>:<images.modelcar.tag> from the chart's values;
LAYOUT is what `python -m scripts.serve.archive --model-name NAME --out LAYOUT` writes.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from scripts.deploy.images import CHART

DOCKERFILE = CHART / "docker" / "Dockerfile.modelcar"


class ModelcarError(RuntimeError):
    pass


def image_name(model: str, values: Path | None = None) -> str:
    modelcar = yaml.safe_load((CHART / "values.yaml").read_text())["images"]["modelcar"]
    if values is not None:
        modelcar = {**modelcar, **((yaml.safe_load(Path(values).read_text()) or {}).get("images", {})
                                   .get("modelcar", {}))}
    return f"{modelcar['repository']}/{model}:{modelcar['tag']}"


def check_layout(layout: Path, model: str) -> None:
    """The layout KServe's runtimes read at /mnt/models: config.properties and the model's archive."""
    missing = [p for p in (layout / "config" / "config.properties", layout / "model-store" / f"{model}.mar")
               if not p.is_file()]
    if missing:
        raise ModelcarError(f"{layout} is not {model}'s storage layout: missing "
                            f"{', '.join(str(p.relative_to(layout)) for p in missing)} (write it with "
                            f"python -m scripts.serve.archive --model-name {model} --out {layout})")


def build_command(layout: Path, name: str, engine: str = "docker", base_image: str | None = None,
                  flags: tuple[str, ...] = ()) -> list[str]:
    cmd = [engine, "build", *flags, "-f", str(DOCKERFILE), "-t", name]
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    return [*cmd, str(layout)]


def build(layout: Path, model: str, values: Path | None = None, push: bool = False,
          registry_free: bool = True) -> str:
    """Build (and push) the modelcar image of `layout`; returns its name."""
    from scripts.containers import base_images
    from scripts.containers.engine import detect

    check_layout(layout, model)
    engine = detect()
    name = image_name(model, values)
    base = base_images.busybox(engine) if registry_free else None
    engine.run(*build_command(layout, name, engine.name, base, engine.build_flags)[1:], timeout=600)
    if push:
        engine.run("push", name, timeout=1800)
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", type=Path, help="the model's storage layout (config/ + model-store/)")
    p.add_argument("--model", required=True, help="the model's name (its .mar is model-store/<model>.mar)")
    p.add_argument("-f", "--values", type=Path, help="a values file whose images.modelcar overrides the chart's")
    p.add_argument("--push", action="store_true", help="push after building")
    p.add_argument("--no-image-registry", action="store_true",
                   help="base image from Debian's busybox-static instead of busybox:1.37")
    p.add_argument("--print", action="store_true", help="print the build command only")
    args = p.parse_args(argv)
    from scripts.containers.engine import EngineError
    try:
        check_layout(args.layout, args.model)
        if args.print:
            print(shlex.join(build_command(args.layout, image_name(args.model, args.values))))
            return 0
        name = build(args.layout, args.model, args.values, args.push, registry_free=args.no_image_registry)
    except (ModelcarError, EngineError) as e:
        print(f"modelcar: error: {e}", file=sys.stderr)
        return 2
    print(f"modelcar: {name} (storageUri: oci://{name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
