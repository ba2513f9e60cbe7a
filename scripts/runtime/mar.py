"""A TorchServe model archive (.mar: a zip) as the runtime reads it."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from handlers.spec import SPEC_FILE, ModelSpec


def read_manifest(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        return json.loads(z.read("MAR-INF/MANIFEST.json"))


def read_spec(mar: Path) -> ModelSpec:
    """The archive's model_spec.json (the archiver puts extra files at the top level)."""
    with zipfile.ZipFile(mar) as z:
        return ModelSpec.from_dict(json.loads(z.read(SPEC_FILE)))
