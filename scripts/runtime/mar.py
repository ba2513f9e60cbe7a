"""A TorchServe model archive (.mar: a zip) as the runtime reads it."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path


def read_manifest(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        return json.loads(z.read("MAR-INF/MANIFEST.json"))
