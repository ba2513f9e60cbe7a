"""TorchServe entry point. TorchServe instantiates the one class defined in this file and calls
`initialize(context)` once and `handle(data, context)` per batch. Each request of the batch may
speak another protocol (raw bytes, multipart, JSON, KServe v1, OIP v2 REST); all images of the
batch go through the model in one forward pass, and each request gets its own status and body."""
from __future__ import annotations

import json
import logging
import os
import time

import torch

from handlers.classifier import ImageClassifier
from handlers.inputs import (is_envelope_input, is_v1_envelope_instance, parse_envelope_input,
                             parse_row, parse_v1_envelope_instance)
from handlers.limits import DEFAULT_MAX_IMAGES
from handlers.metrics import MULTIPROC_DIR_ENV, Observation, PrometheusMetrics, Stopwatch, TorchServeMetrics
from handlers.responses import render
from handlers.settings import RequestLimits

log = logging.getLogger(__name__)


def _header(context, idx: int, name: str) -> str | None:
    for key in (name, name.lower(), name.title()):
        value = context.get_request_header(idx, key)
        if value is not None:
            return value
    return None


def _content_type(context, idx: int) -> str | None:
    for key in ("body", "data"):
        header = context.get_request_header(idx, key)
        if isinstance(header, dict):
            return header.get("content-type")
    return None


class TorchServeImageClassifier:
    def __init__(self):
        self.classifier: ImageClassifier | None = None
        self.metrics: PrometheusMetrics | TorchServeMetrics | None = None
        self.initialized = False
        self.max_images = DEFAULT_MAX_IMAGES

    def initialize(self, context) -> None:
        props = context.system_properties
        gpu_id = props.get("gpu_id")
        device = f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu"
        start = time.perf_counter()
        self.classifier = ImageClassifier.load(props["model_dir"], device=device)
        self.max_images = RequestLimits.from_env().max_images_per_request
        spec = self.classifier.spec
        if os.environ.get(MULTIPROC_DIR_ENV):  # our exporter serves them (handlers/exporter.py)
            self.metrics = PrometheusMetrics(spec.name, spec.version)
        else:  # a TorchServe on its own: through its frontend, with its default buckets
            self.metrics = TorchServeMetrics(context.metrics, spec.version) if context.metrics else None
        if self.metrics:
            self.metrics.model_loaded(time.perf_counter() - start, spec)
        self.initialized = True
        log.info("loaded %s v%s (%s%s) on %s (%d classes)", spec.name, spec.version, spec.format,
                 f", training run {spec.source['run_id']}" if spec.source.get("run_id") else "", device, len(spec.labels))

    def _reply(self, context, idx: int, status: int, phrase: str) -> None:
        context.set_response_status(status, phrase, idx)
        context.set_response_content_type(idx, "application/json")
        context.set_response_header(idx, "x-model-version", self.classifier.spec.version)

    def handle(self, data: list[dict], context) -> list[dict | str]:
        obs = Observation()
        with Stopwatch(obs, "handle"):
            out = self._handle(data, context, obs)
        if self.metrics:
            self.metrics.record(obs)
        return out

    def _handle(self, data: list[dict], context, obs: Observation) -> list[dict | str]:
        max_bytes = self.classifier.max_bytes
        # Under a stock envelope the rows are the inputs of ONE request (see handlers.inputs).
        if data and all(is_envelope_input(row) for row in data):
            enveloped, requests = "v2", [parse_envelope_input(row, max_bytes) for row in data]
        elif data and all(is_v1_envelope_instance(row) for row in data):
            enveloped, requests = "v1", [parse_v1_envelope_instance(row, max_bytes, i) for i, row in enumerate(data)]
        else:
            enveloped = None
            requests = [parse_row(row, max_bytes, _content_type(context, i), _header(context, i, "X-TopK"),
                                  self.max_images) for i, row in enumerate(data)]
        images, ks, owners = [], [], []
        for r, req in enumerate(requests):
            if req.error is not None:
                obs.rejected[req.error.reason] += 1
            else:
                images += req.images
                ks += [req.topk] * len(req.images)
                owners += [r] * len(req.images)
        flat = self.classifier.predict(images, ks, obs)
        per_request: list[list] = [[] for _ in requests]
        for owner, result in zip(owners, flat):
            per_request[owner].append(result)

        rendered = [render(req, results, self.classifier.spec) for req, results in zip(requests, per_request)]
        if enveloped == "v2":  # one request: its status is the worst of its inputs'
            status, body = max(rendered, key=lambda r: r[0])
            self._reply(context, 0, status, json.loads(body).get("error", "") if status != 200 else "")
        elif enveloped == "v1":  # like our own v1: 200 unless every instance failed
            ok = any(status == 200 for status, _ in rendered)
            status, body = (200, {}) if ok else rendered[0]
            self._reply(context, 0, status, "" if ok else body.get("error", ""))
        else:
            for idx, (status, body) in enumerate(rendered):
                self._reply(context, idx, status, body.get("error", "") if status != 200 else "")
        return [body for _, body in rendered]
