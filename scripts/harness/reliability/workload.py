"""Real images with the answer each must get (the served archive's own model, in process), the
request of each protocol for an image, and the HTTP sender that checks every answer against its
own request's: what every scenario sends through scripts/harness/load.py."""
from __future__ import annotations

import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import requests

from scripts.harness.load import Outcome, Send, loopback_only
from scripts.harness.reliability.inputs import b64

Answer = dict[str, float]


class Reference:
    """The served archive's own model, in process: the answer each request must get."""

    def __init__(self, mar: Path):
        from handlers.classifier import ImageClassifier  # torch: only where answers are computed

        self._tmp = tempfile.TemporaryDirectory(prefix="reliability-mar-")
        with zipfile.ZipFile(mar) as z:
            z.extractall(self._tmp.name)
        self.classifier = ImageClassifier.load(self._tmp.name)

    def answer(self, body: bytes) -> Answer:
        result = self.classifier.predict([body])[0]
        if not isinstance(result, dict):
            raise ValueError(f"the reference refuses this image: {result}")
        return result


def matches(got, expected: Answer, tol: float) -> bool:
    """Same top-1 and the same probabilities up to float noise (near-zero tail labels may swap)."""
    if not isinstance(got, dict) or not got or next(iter(got)) != next(iter(expected)):
        return False
    for label in set(got) | set(expected):
        if abs(float(got.get(label, 0.0)) - float(expected.get(label, 0.0))) > tol:
            return False
    return True


@dataclass
class Workload:
    """Real images with the answer each must get; requests rotate through them and through the
    protocols, so a response swapped between requests is caught."""

    images: list[bytes]
    expected: list[Answer]
    protocols: tuple[str, ...] = ("raw", "raw", "v1", "v2")

    @classmethod
    def from_images(cls, images: list[bytes], reference: Reference) -> "Workload":
        return cls(images, [reference.answer(b) for b in images])

    def over(self, protocols: tuple[str, ...]) -> "Workload":
        """The same images and answers, sent in the request kinds a server speaks."""
        return replace(self, protocols=protocols)

    def request(self, i: int, model_path: str) -> tuple[str, dict, int]:
        """(path, requests kwargs, image index) of the i-th request."""
        k = i % len(self.images)
        body, proto = self.images[k], self.protocols[(i // len(self.images) + i) % len(self.protocols)]
        if proto == "v1":
            return f"/v1/models/{model_path}:predict", {"json": {"instances": [{"b64": b64(body)}]}}, k
        if proto == "v2":
            return f"/v2/models/{model_path}/infer", {"json": {"id": f"r{i}", "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(body)]}]}}, k
        return f"/predictions/{model_path}", {"data": body}, k


def answer_of(response: requests.Response) -> Answer | None:
    """The top-k in any protocol's body (None if the body is not a prediction)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "predictions" in body:
        return body["predictions"][0]
    if isinstance(body, dict) and "outputs" in body:
        labels, probs = body["outputs"]
        return dict(zip(labels["data"], probs["data"]))
    return body if isinstance(body, dict) else None


def message_of(r: requests.Response) -> tuple[str, str]:
    """(reason, message): our handler's JSON, TorchServe's own JSON, else the status line."""
    try:
        body = r.json()
    except ValueError:
        return "", r.reason or ""
    if isinstance(body, dict):
        return str(body.get("reason", "")), str(body.get("error") or body.get("message") or "")
    return "", r.text[:200]


def http_sender(server, work: Workload, timeout: float, tol: float, open_with: str | None = None,
                refused_pause_s: float = 0.05):
    """A sender factory for scripts/harness/load.py: each client thread gets its own keep-alive
    session (opened with a GET of `open_with` first, when given); request i is work.request(i),
    sent to the server's endpoint of the moment (servers.py), and is right when its answer is its
    own image's. A client whose connection is refused waits `refused_pause_s` before its next
    request, as a real client backs off, so a server that is down is not spun against."""
    loopback_only(server.url)

    def sender() -> Send:
        session = requests.Session()
        if open_with:
            try:
                session.get(server.url + open_with, timeout=timeout)
            except requests.RequestException:
                pass  # the burst's own request will say what is wrong

        def send(i: int) -> Outcome:
            path, kw, k = work.request(i, server.model)
            try:
                r = session.post(server.url + path, timeout=timeout, **kw)
            except requests.ConnectionError:
                time.sleep(refused_pause_s)
                raise
            return Outcome(r.status_code == 200 and matches(answer_of(r), work.expected[k], tol), r.status_code,
                           r.headers.get("x-model-version"),
                           "" if r.status_code == 200 else (message_of(r)[1] or r.text)[:200])
        return send
    return sender
