"""TorchServe's envelope configurations on a real TorchServe: "oip" (archive --protocol oip: its
OIP gRPC service behind the stock kservev2 envelope) and "v1" (the stock kserve envelope). Our
handler reads the envelopes' rows."""
import base64
import shutil

import pytest
import requests

from scripts.serve import archive

from scripts.client import wire
from scripts.serve.torchserve import TorchServe
from scripts.serve.settings import loopback_settings
from tests.helpers import MODEL_NAME, assert_same_topk

pytestmark = pytest.mark.integration


def torchserve_with(protocol: str, store, tmp_path_factory):
    """A real TorchServe serving the fashion-mnist archive in another protocol configuration."""
    other = tmp_path_factory.mktemp(f"{protocol}-store")
    (other / "model-store").mkdir()
    shutil.copy2(store / "model-store" / f"{MODEL_NAME}.mar", other / "model-store")
    archive.write_config(other, protocol=protocol)
    ts = TorchServe(other, loopback_settings(), tmp_path_factory.mktemp(f"{protocol}-run"))
    ts.start(timeout=180)
    return ts


@pytest.fixture(scope="module")
def oip_torchserve(store, tmp_path_factory):
    ts = torchserve_with("oip", store, tmp_path_factory)
    yield ts
    ts.stop()


def test_oip_config_sets_the_envelope_and_batch_size_one(oip_torchserve):
    text = oip_torchserve.config.read_text()
    assert "service_envelope=kservev2" in text and "ts_open_inference_protocol=true" in text
    (described,) = oip_torchserve.model_status(MODEL_NAME)
    assert described["batchSize"] == 1


def test_oip_grpc_returns_the_same_topk_as_native(oip_torchserve, torchserve, samples):
    out_dir, listed = samples
    target = f"{oip_torchserve.settings.host}:{oip_torchserve.settings.grpc_inference_port}"
    for s in listed[:3]:
        png = (out_dir / s["file"]).read_bytes()
        assert_same_topk(wire.grpc_oip_torchserve(target, MODEL_NAME, png),
                         wire.rest_native(torchserve.settings.inference_url, MODEL_NAME, png))


def test_oip_grpc_bad_image_is_named_and_the_server_keeps_serving(oip_torchserve, samples):
    out_dir, listed = samples
    target = f"{oip_torchserve.settings.host}:{oip_torchserve.settings.grpc_inference_port}"
    with pytest.raises(wire.PredictError, match="not an image"):
        wire.grpc_oip_torchserve(target, MODEL_NAME, b"not an image")
    ok = wire.grpc_oip_torchserve(target, MODEL_NAME, (out_dir / listed[0]["file"]).read_bytes())
    assert next(iter(ok)) == listed[0]["label"]


def test_v2_rest_through_the_envelope_gets_a_4xx_for_a_bad_image(oip_torchserve):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(b"junk").decode()]}]}
    r = requests.post(f"{oip_torchserve.settings.inference_url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
    assert r.status_code == 400


@pytest.fixture(scope="module")
def v1_torchserve(store, tmp_path_factory):
    ts = torchserve_with("v1", store, tmp_path_factory)
    yield ts
    ts.stop()


def test_v1_envelope_configuration_serves_kserve_v1(v1_torchserve, torchserve, samples):
    """The stock kserve envelope: our handler reads its instance rows; bad instances fail alone."""
    out_dir, listed = samples
    pngs = [(out_dir / s["file"]).read_bytes() for s in listed[:2]]
    assert "service_envelope=kserve\n" in v1_torchserve.config.read_text()
    body = {"instances": [{"b64": base64.b64encode(pngs[0]).decode()}, base64.b64encode(b"junk").decode(),
                          {"data": base64.b64encode(pngs[1]).decode()}]}
    r = requests.post(f"{v1_torchserve.settings.inference_url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=30)
    assert r.status_code == 200
    preds = r.json()["predictions"]
    for got, png in ((preds[0], pngs[0]), (preds[2], pngs[1])):
        assert_same_topk(got, wire.rest_native(torchserve.settings.inference_url, MODEL_NAME, png))
    assert preds[1]["reason"] == "invalid_image" and preds[1]["error"].startswith("instances[1]")
    only_bad = requests.post(f"{v1_torchserve.settings.inference_url}/v1/models/{MODEL_NAME}:predict",
                             json={"instances": ["%%%"]}, timeout=30)
    assert only_bad.status_code == 400
