"""Render the Helm chart (charts/image-classifier, the one source of truth) into plain manifests
in k8s/: one file per object plus kustomization.yaml, for `kubectl apply -k k8s/`.

    python -m scripts.deploy.k8s_render            # (re)write k8s/ from the chart's default values
    python -m scripts.deploy.k8s_render --check    # exit 1 if k8s/ differs from the chart (CI, tests)

helm comes from HELM, .tools/bin/helm (scripts/setup.sh installs it there) or PATH. Rendering is
offline: `helm template` never contacts a cluster.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "image-classifier"
K8S_DIR = REPO / "k8s"
RELEASE = "image-classifier"
HEADER = ("# Rendered from charts/image-classifier by `python -m scripts.deploy.k8s_render` (make k8s):\n"
          "# edit the chart, not this file.\n")


class ToolError(RuntimeError):
    pass


def find_tool(name: str) -> str:
    """A Kubernetes CLI: $HELM/$KUBECTL, the project's .tools/bin, then PATH."""
    candidates = [os.environ.get(name.upper(), ""), str(REPO / ".tools" / "bin" / name), shutil.which(name) or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ToolError(f"{name} not found: run scripts/setup.sh (installs it into .tools/bin) or set {name.upper()}")


def helm_template(*args: str, chart: Path = CHART, release: str = RELEASE) -> str:
    """`helm template` output; raises ToolError with helm's message when it refuses."""
    proc = subprocess.run([find_tool("helm"), "template", release, str(chart), *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolError(proc.stderr.strip() or f"helm template failed ({proc.returncode})")
    return proc.stdout


def split_documents(text: str) -> list[tuple[str, dict]]:
    """(source text, parsed object) per non-empty YAML document of a multi-document stream."""
    docs = []
    for chunk in re.split(r"^---[ \t]*$", text, flags=re.M):
        obj = yaml.safe_load(chunk)
        if obj:
            docs.append((chunk.strip("\n"), obj))
    return docs


def file_name(obj: dict) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def rendered_files(chart: Path = CHART) -> dict[str, str]:
    """File name → content of k8s/ for the chart's default values."""
    files: dict[str, str] = {}
    for text, obj in split_documents(helm_template(chart=chart)):
        text = "\n".join(line for line in text.splitlines() if not line.startswith("# Source: "))
        name = file_name(obj)
        if name in files:
            raise ToolError(f"two rendered objects map to k8s/{name}")
        files[name] = HEADER + text.strip("\n") + "\n"
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": sorted(files)}
    files["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def stale_files(out: Path = K8S_DIR, chart: Path = CHART) -> list[str]:
    """Differences between `out` and the chart: missing, changed or extra .yaml files."""
    want = rendered_files(chart)
    have = {p.name for p in out.glob("*.yaml")} if out.is_dir() else set()
    problems = [f"{n}: missing" for n in sorted(set(want) - have)]
    problems += [f"{n}: differs" for n in sorted(set(want) & have) if (out / n).read_text() != want[n]]
    problems += [f"{n}: not rendered by the chart" for n in sorted(have - set(want))]
    return problems


def write(out: Path = K8S_DIR, chart: Path = CHART) -> list[Path]:
    files = rendered_files(chart)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        if old.name not in files:
            old.unlink()
    written = []
    for name, text in files.items():
        path = out / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare k8s/ with the chart")
    p.add_argument("--out", type=Path, default=K8S_DIR)
    args = p.parse_args(argv)
    try:
        if args.check:
            problems = stale_files(args.out)
            if problems:
                print("k8s_render: k8s/ is out of date with the chart (run `make k8s`):\n  "
                      + "\n  ".join(problems), file=sys.stderr)
                return 1
            print(f"k8s_render: {args.out} is up to date with {CHART.relative_to(REPO)}")
            return 0
        files = write(args.out)
    except ToolError as e:
        print(f"k8s_render: error: {e}", file=sys.stderr)
        return 2
    print(f"k8s_render: {len(files)} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
