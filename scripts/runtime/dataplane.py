"""kserve's DataPlane, with TorchServe's raw-bytes bodies on the v1 route, OIP v2 bodies in the
binary tensor extension (tritonclient's), and complete model metadata."""
from __future__ import annotations

from kserve.protocol.dataplane import DataPlane

from scripts.runtime.decode import rest_v2_request
from scripts.runtime.model import MarModel

PLATFORM = "pytorch"


class ClassifierDataPlane(DataPlane):
    def decode(self, body, headers, protocol_version: str = "v1", model_name: str | None = None):
        """kserve reads application/octet-stream as JSON; TorchServe's native protocol sends raw
        image bytes with it. A v1 body that is not JSON-shaped passes through raw, as image/* does."""
        if (isinstance(body, bytes) and protocol_version.lower() == "v1" and headers
                and headers.get("content-type", "").split(";")[0].strip() == "application/octet-stream"
                and body.lstrip()[:1] not in (b"{", b"[")):
            return body, {}
        if isinstance(body, bytes) and protocol_version.lower() == "v2":
            return rest_v2_request(body, headers or {}, model_name), {}
        return super().decode(body, headers, protocol_version, model_name)

    async def model_metadata(self, model_name: str) -> dict:
        """OIP model metadata with the model's version and platform (kserve leaves them out)."""
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        if isinstance(model, MarModel):
            metadata.update(versions=[model.version], platform=PLATFORM)
        return metadata
