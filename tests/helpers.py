"""Helpers shared by the tests of every area (fixtures are in conftest.py)."""
from __future__ import annotations

import ast
import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from scripts.serve import archive
from scripts.serve.settings import DEFAULT_MODEL

MODEL_NAME = DEFAULT_MODEL
IMAGENET_NAME = "imagenet"


def names_written_outside(registry: str, names: set[str]) -> list[str]:
    """Where model/*.py uses one of `names` as a dict key or in a comparison, outside the assignment
    to `registry`: a per-name fact kept somewhere other than its registry entry."""
    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "model").glob("*.py")):
        tree = ast.parse(path.read_text())
        assigns = [(node, node.targets if isinstance(node, ast.Assign) else [node.target])
                   for node in tree.body if isinstance(node, ast.Assign | ast.AnnAssign)]
        inside = {id(n) for node, targets in assigns if registry in {getattr(t, "id", None) for t in targets}
                  for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in inside:
                continue
            if isinstance(node, ast.Dict):
                used = node.keys
            elif isinstance(node, ast.Compare):
                used = [node.left, *node.comparators]
                used += [e for c in used if isinstance(c, ast.Tuple | ast.List | ast.Set) for e in c.elts]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {c.value!r}" for c in used
                      if isinstance(c, ast.Constant) and c.value in names]
    return found


# Not the tests' to check: git's, the virtualenvs and tools `make setup` installs, caches of Python
# and pytest.
NOT_WATCHED = {".git", ".venv", ".tools", ".pytest_cache", "__pycache__"}


def written_since(root: Path, t0: float) -> list[str]:
    """Files under `root` modified after `t0` (relative paths)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in NOT_WATCHED]
        for name in filenames:
            path = Path(dirpath) / name
            try:
                if path.stat().st_mtime > t0:
                    found.append(path.relative_to(root).as_posix())
            except FileNotFoundError:
                pass
    return sorted(found)


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def assert_same_topk(got: dict, expected: dict, abs_tol: float = 1e-5) -> None:
    """Same labels in the same order, probabilities equal up to float noise (batched and single
    forward passes take different kernels)."""
    assert list(got) == list(expected)
    assert got == pytest.approx(expected, abs=abs_tol)


def assert_archive_serves_like_the_checkpoint(ckpt_path: Path, name: str, samples, tmp_path: Path,
                                              net_file: str) -> None:
    """Archive a trained checkpoint with the real archiver, load it the way TorchServe's worker does
    (its own network file only, never model/), and check every sample gets a 200 with the answer
    the checkpoint's network gives in-process."""
    from ts.context import Context, RequestProcessor

    from handlers.classifier import ImageClassifier
    from handlers.torchserve_handler import TorchServeImageClassifier
    from model import checkpoint, nets

    mar, _ = archive.archive(ckpt_path, tmp_path / "serve", name)
    unpacked = tmp_path / "mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    shipped = {p.name for p in unpacked.iterdir()}
    other_nets = {a.file.name for a in nets.ARCHS.values()} - {net_file}
    assert net_file in shipped and not other_nets & shipped, shipped
    ctx = Context(name, str(unpacked), archive.read_manifest(mar), batch_size=8, gpu=None, mms_version="0.12.0")
    handler = TorchServeImageClassifier()
    handler.initialize(ctx)
    out_dir, listed = samples
    rows = [{"body": bytearray((out_dir / s["file"]).read_bytes())} for s in listed]
    ctx.request_processor = [RequestProcessor({}) for _ in rows]
    out = handler.handle(rows, ctx)
    ckpt = checkpoint.load(ckpt_path)
    spec, _, _ = archive.model_spec_from_checkpoint(ckpt, name, "1.0")
    reference = ImageClassifier(checkpoint.build_net(ckpt), spec)
    assert [ctx.get_response_status(i)[0] for i in range(len(rows))] == [200] * len(rows)
    for result, row in zip(out, rows, strict=True):
        assert_same_topk(result, reference.predict([bytes(row["body"])])[0])


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels` (any order)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
