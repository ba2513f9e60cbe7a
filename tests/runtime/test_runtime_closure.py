"""The KServe-native runtime's import closure: handlers/ (the SERVE_* settings included) and its own
package, nothing of training (model/), the tools or their dependencies. Its image
(docker/Dockerfile.kserve-native) copies and installs only that; a new import of model/ or of a
tool fails here before it fails in a pod."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWED_LOCAL = ("handlers", "scripts.runtime")
ALLOWED_EXACT = {"scripts"}
NOT_IN_THE_IMAGE = ("model", "mlflow", "matplotlib", "skimage", "ts", "model_archiver", "efficientnet_lite_pytorch")


def imported_by(module: str) -> tuple[list[str], list[str]]:
    """(modules of this repository, top-level third-party packages) after `import module`, in a
    fresh interpreter."""
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps({n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}))")
    out = subprocess.run([sys.executable, "-c", code, module], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    modules = json.loads(out)
    files = {n: Path(f) for n, f in modules.items() if f and Path(f).is_absolute()}  # torch.ops has a name only
    local = sorted(n for n, f in files.items() if f.is_relative_to(REPO) and ".venv" not in f.parts)
    third = sorted({n.split(".")[0] for n, f in files.items() if ".venv" in f.parts})
    return local, third


@pytest.mark.integration
def test_the_runtime_imports_only_handlers_and_its_package():
    local, third = imported_by("scripts.runtime.server")
    outside = [n for n in local if not (n in ALLOWED_EXACT or n.startswith(ALLOWED_LOCAL))]
    assert not outside, f"the runtime reaches outside handlers/ and scripts/runtime/: {outside}"
    assert "scripts.runtime.kserve_adapter" in local and "handlers.classifier" in local
    assert not set(third) & set(NOT_IN_THE_IMAGE), set(third) & set(NOT_IN_THE_IMAGE)


@pytest.mark.integration
def test_the_check_sees_a_tool_import():
    """The same check on a tool that imports training code reports it."""
    local, third = imported_by("scripts.serve.archive")
    assert any(n.startswith("model") for n in local)
