"""TorchServe entry point. TorchServe instantiates the one class defined in this file and calls
`initialize(context)` once and `handle(data, context)` per batch; all model work is delegated to
the transport-agnostic ImageClassifier."""
from __future__ import annotations

import logging

import torch

from handlers.classifier import ImageClassifier
from handlers.errors import InputError
from handlers.inputs import payload_from_row

log = logging.getLogger(__name__)


class TorchServeImageClassifier:
    def __init__(self):
        self.classifier: ImageClassifier | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        props = context.system_properties
        gpu_id = props.get("gpu_id")
        device = f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu"
        self.classifier = ImageClassifier.load(props["model_dir"], device=device)
        self.initialized = True
        spec = self.classifier.spec
        log.info("loaded %s v%s on %s (%d classes)", spec.name, spec.version, device, len(spec.labels))

    def handle(self, data: list[dict], context) -> list:
        results = self.classifier.predict([payload_from_row(row) for row in data])
        out = []
        for idx, result in enumerate(results):
            context.set_response_content_type(idx, "application/json")
            if isinstance(result, InputError):
                # Per-request status: the rest of the batch still gets its 200 and its result.
                context.set_response_status(result.status, str(result), idx)
                out.append(result.to_dict())
            else:
                out.append(result)
        return out
