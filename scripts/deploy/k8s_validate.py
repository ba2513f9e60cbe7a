"""Strict offline validation of Kubernetes manifests, no cluster involved.

    python -m scripts.deploy.k8s_validate k8s/*.yaml [--kube-version 1.30.0 --kube-version 1.35.0]

- Core kinds (Namespace, Pod, NetworkPolicy, ...): the PyPI package kubernetes-validate with its
  bundled OpenAPI schemas, strict (unknown fields are errors), for each Kubernetes version asked.
- Custom resources (KServe, prometheus-operator): JSON Schema validation against the real CRD's
  openAPIV3Schema from the CRD files in CRDS_DIR (default: ../shared/crds beside the repo; the
  CRDs are data, not copied into the repo). The structural schema is made strict: x-kubernetes-*
  keys are dropped, int-or-string accepts either, `nullable` accepts null, and every object
  refuses unknown properties unless it carries x-kubernetes-preserve-unknown-fields.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBE_VERSIONS = ("1.30.0", "1.35.0")

# What the API server checks in metadata (ObjectMeta itself is not part of a CRD's schema).
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}


class ValidationFailed(Exception):
    pass


def crds_dir() -> Path:
    """CRDS_DIR, else ../shared/crds next to the repository."""
    return Path(os.environ.get("CRDS_DIR") or REPO.parent / "shared" / "crds")


def strict_schema(node, preserve: bool = False):
    """A CRD structural schema turned into a strict JSON Schema (see the module docstring)."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "example"):
            continue
        if key == "properties":
            out[key] = {k: strict_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict_schema(v) for v in value]
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}] + out.get("anyOf", [])
    if out.get("type") == "object" and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@dataclass(frozen=True)
class CrdSchema:
    group: str
    version: str
    kind: str
    source: Path
    schema: dict

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@lru_cache(maxsize=None)
def load_crds(directory: Path | None = None) -> dict[tuple[str, str], CrdSchema]:
    """(apiVersion, kind) → strict schema of every served version of every CRD in the folder."""
    directory = directory or crds_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"no CRD folder {directory} (set CRDS_DIR)")
    crds = {}
    for path in sorted(directory.rglob("*.yaml")):
        # the libyaml loader: the InferenceService CRD alone is 2 MB of YAML
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                if not v.get("served", True):
                    continue
                schema = strict_schema(v["schema"]["openAPIV3Schema"])
                schema.setdefault("properties", {})["metadata"] = METADATA_SCHEMA
                schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
                crd = CrdSchema(spec["group"], v["name"], spec["names"]["kind"], path, schema)
                crds[(crd.api_version, crd.kind)] = crd
    if not crds:
        raise FileNotFoundError(f"no CustomResourceDefinition in {directory}")
    return crds


def is_custom(obj: dict) -> bool:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def validate_custom(obj: dict, crds: dict | None = None) -> list[str]:
    crds = crds if crds is not None else load_crds()
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in crds:
        return [f"no CRD for {key[0]} {key[1]} in {crds_dir()}"]
    validator = jsonschema.Draft7Validator(crds[key].schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


def validate_core(obj: dict, kube_version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(map(str, e.path)) or "<root>"
        return [f"{path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {kube_version}: {e}"]
    return []


def validate(obj: dict, kube_versions=KUBE_VERSIONS) -> list[str]:
    """Every problem of one object, each prefixed with what checked it."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if is_custom(obj):
        return [f"{where} (CRD schema): {m}" for m in validate_custom(obj)]
    return [f"{where} (Kubernetes {v}): {m}" for v in kube_versions for m in validate_core(obj, v)]


def load_objects(paths) -> list[dict]:
    objs = []
    for p in paths:
        for doc in yaml.safe_load_all(Path(p).read_text()):
            if doc and doc.get("kind") != "Kustomization":
                objs.append(doc)
    return objs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--kube-version", action="append", help=f"default: {', '.join(KUBE_VERSIONS)}")
    args = p.parse_args(argv)
    versions = tuple(args.kube_version or KUBE_VERSIONS)
    objs = load_objects(args.files)
    problems = [m for o in objs for m in validate(o, versions)]
    for m in problems:
        print(m, file=sys.stderr)
    print(f"k8s_validate: {len(objs)} objects, {len(problems)} problems "
          f"(core kinds: Kubernetes {', '.join(versions)}; CRDs from {crds_dir()})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
