"""The kserve code scripts/runtime/kserve_adapter.py copies or relies on, checked against the
installed kserve: an upgrade that changes a copied method, or drops a private name, fails here by
name instead of changing the runtime silently."""
from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

from scripts.runtime import decode, kserve_adapter


def resolve(dotted: str):
    """kserve.a.b.Class.method → the object, importing the longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def source_hash(obj) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@pytest.mark.parametrize("dotted", sorted(kserve_adapter.COPIED_FROM_KSERVE))
def test_copied_kserve_source_is_unchanged(dotted):
    assert source_hash(resolve(dotted)) == kserve_adapter.COPIED_FROM_KSERVE[dotted], (
        f"{dotted} changed in the installed kserve: bring kserve_adapter.py's copy in line, then its hash")


@pytest.mark.parametrize("dotted", sorted(kserve_adapter.PRIVATE_NAMES))
def test_private_kserve_names_still_exist(dotted):
    cls = resolve(dotted)
    init = inspect.getsource(cls.__init__)
    for name in kserve_adapter.PRIVATE_NAMES[dotted]:
        assert hasattr(cls, name) or f"self.{name} =" in init, f"{dotted}.{name} is gone from kserve"


def test_raw_tensor_contents_are_still_on_the_private_attribute():
    """decode.py reads gRPC raw_input_contents from InferInput._raw_data (kserve has no public way)."""
    from kserve.protocol.infer_type import InferInput

    assert "_raw_data" in inspect.getsource(InferInput.__init__)
    tensor = InferInput(name="image", shape=[1], datatype="BYTES", data=None)
    tensor._raw_data = b"\x01\x00\x00\x00x"  # what kserve keeps of gRPC raw_input_contents
    assert decode._elements(tensor) == [b"x"]
