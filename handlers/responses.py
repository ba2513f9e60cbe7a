"""Per-request response bodies for each protocol, from per-image results (top-k dicts or
InputErrors). Returns (HTTP status, JSON-able body); transports only copy them out."""
from __future__ import annotations

import json
import uuid

from handlers.errors import InputError
from handlers.inputs import ENVELOPE_V1, ENVELOPE_V2, NATIVE, V1, V2, ParsedRequest
from handlers.spec import ModelSpec

Result = dict | InputError


def located(err: InputError, where: str) -> InputError:
    """The same error type, its message prefixed with which image of the request failed."""
    if str(err).startswith(f"{where}:"):
        return err
    return type(err)(f"{where}: {err}")


def v2_outputs(results: list[dict]) -> list[dict]:
    """Top-k as two proper tensors of shape [N, k]: label names (BYTES) and probabilities (FP32)."""
    n, k = len(results), len(results[0])
    labels = [label for r in results for label in r]
    probs = [p for r in results for p in r.values()]
    return [{"name": "labels", "datatype": "BYTES", "shape": [n, k], "data": labels},
            {"name": "probabilities", "datatype": "FP32", "shape": [n, k], "data": probs}]


def render(req: ParsedRequest, results: list[Result], spec: ModelSpec) -> tuple[int, dict | str]:
    if req.protocol == ENVELOPE_V2:
        # The stock envelope turns each returned value into a BYTES output tensor named after
        # the input: the top-k (or the error) travels as one JSON string.
        error = req.error or next((r for r in results if isinstance(r, InputError)), None)
        if error is not None:
            return error.status, json.dumps(error.to_dict())
        return 200, json.dumps(results[0])
    if req.error is not None:
        return req.error.status, req.error.to_dict()
    if req.protocol == ENVELOPE_V1:  # the stock envelope wraps these into {"predictions": [...]}
        (result,) = results
        if isinstance(result, InputError):
            error = located(result, req.input_name)
            return error.status, error.to_dict()
        return 200, result
    if req.protocol == NATIVE:
        (result,) = results
        return (result.status, result.to_dict()) if isinstance(result, InputError) else (200, result)

    name = "instances" if req.protocol == V1 else req.input_name
    errors = [located(r, f"{name}[{i}]") for i, r in enumerate(results) if isinstance(r, InputError)]
    if req.protocol == V1:
        if len(errors) == len(results):  # nothing to return: the request as a whole failed
            return errors[0].status, errors[0].to_dict()
        # KServe v1 has no per-instance status: a bad instance gets an error object in its slot
        it = iter(errors)
        predictions = [next(it).to_dict() if isinstance(r, InputError) else r for r in results]
        return 200, {"predictions": predictions, "model_name": spec.name, "model_version": spec.version}
    if req.protocol == V2:
        if errors:  # a v2 output tensor cannot have holes: name the first bad element
            return errors[0].status, errors[0].to_dict()
        return 200, {"id": req.request_id or str(uuid.uuid4()), "model_name": spec.name,
                     "model_version": spec.version, "outputs": v2_outputs(results)}
    raise ValueError(f"unknown protocol {req.protocol!r}")
