"""The wire clients (and `python -m scripts.client.predict --protocol ...`) against a real TorchServe:
REST native, KServe v1 and OIP v2 REST through kserve's SDK client, and TorchServe's native gRPC
through stubs generated from its jar."""
import pytest

from scripts.client import wire

from scripts.client import grpc_stubs

from scripts.client import predict
from tests.helpers import MODEL_NAME, assert_same_topk

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoints(torchserve):
    s = torchserve.settings
    return s.inference_url, f"{s.host}:{s.grpc_inference_port}"


@pytest.fixture(scope="module")
def pngs(samples):
    out_dir, listed = samples
    return [(out_dir / s["file"]).read_bytes() for s in listed[:3]]


def test_stubs_are_generated_from_the_installed_jar(tmp_path):
    out = grpc_stubs.generate(tmp_path)
    files = sorted(p.name for p in (out / grpc_stubs.PACKAGE).glob("*.py"))
    assert files == ["__init__.py", "inference_pb2.py", "inference_pb2_grpc.py", "management_pb2.py",
                     "management_pb2_grpc.py", "open_inference_grpc_pb2.py", "open_inference_grpc_pb2_grpc.py"]
    before = (out / grpc_stubs.PACKAGE / "inference_pb2.py").stat().st_mtime_ns
    grpc_stubs.generate(tmp_path)  # same jar: nothing regenerated
    assert (out / grpc_stubs.PACKAGE / "inference_pb2.py").stat().st_mtime_ns == before


def test_every_torchserve_protocol_gives_the_same_topk(endpoints, pngs):
    url, target = endpoints
    native = [wire.rest_native(url, MODEL_NAME, p) for p in pngs]
    for got in (wire.rest_v1(url, MODEL_NAME, pngs), wire.rest_v2(url, MODEL_NAME, pngs),
                [wire.grpc_native(target, MODEL_NAME, p) for p in pngs]):
        assert len(got) == len(native)
        for a, b in zip(got, native, strict=True):
            assert_same_topk(a, b)


def test_topk_travels_on_every_rest_protocol(endpoints, pngs):
    url, _ = endpoints
    assert len(wire.rest_native(url, MODEL_NAME, pngs[0], topk=2)) == 2
    assert [len(r) for r in wire.rest_v1(url, MODEL_NAME, pngs, topk=3)] == [3, 3, 3]
    assert [len(r) for r in wire.rest_v2(url, MODEL_NAME, pngs[:2], topk=1)] == [1, 1]


@pytest.mark.parametrize("call", [
    lambda url, target: wire.rest_native(url, MODEL_NAME, b"not an image"),
    lambda url, target: wire.rest_v1(url, MODEL_NAME, [b"not an image"]),
    lambda url, target: wire.rest_v2(url, MODEL_NAME, [b"not an image"]),
])
def test_rest_clients_surface_the_servers_message(endpoints, call):
    with pytest.raises(wire.PredictError, match="HTTP 400.*not an image"):
        call(*endpoints)


def test_grpc_errors_are_named(endpoints):
    _, target = endpoints
    with pytest.raises(wire.PredictError, match="gRPC"):
        wire.grpc_native(target, "no-such-model", b"x")
    with pytest.raises(wire.PredictError, match="not an image"):
        wire.grpc_native(target, MODEL_NAME, b"not an image")


@pytest.mark.parametrize("protocol", ["rest", "v1", "v2", "grpc"])
def test_predict_cli_on_each_protocol(protocol, endpoints, samples, capsys):
    url, target = endpoints
    out_dir, listed = samples
    image = out_dir / listed[0]["file"]
    assert predict.main([str(image), "--model", MODEL_NAME, "--protocol", protocol, "--url", url,
                         "--grpc-target", target]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{image}:" and printed[1].split(maxsplit=1)[1] == listed[0]["label"]


@pytest.fixture(scope="module")
def formats(samples):
    """One real test image in every format and mode the issue names, as clients send them."""
    from tests.runtime.test_protocols import encodings, modes_of

    out_dir, listed = samples
    png = (out_dir / listed[0]["file"]).read_bytes()
    return {**encodings(png), **modes_of(png)}


@pytest.mark.parametrize("protocol", ["rest", "v1", "v2", "grpc"])
def test_every_protocol_takes_every_format(protocol, formats, endpoints, unpacked_mar):
    from handlers.classifier import ImageClassifier

    url, target = endpoints
    reference = ImageClassifier.load(unpacked_mar)
    names, bodies = list(formats), list(formats.values())
    got = predict.predict_with(protocol, bodies, MODEL_NAME, url, target, None)
    for name, body, answer in zip(names, bodies, got, strict=True):
        expected = reference.predict([body])[0]
        assert list(answer) == list(expected), name
        assert answer == pytest.approx(expected, abs=1e-5), name
