"""KServe v0.20.0's storage initializer (scripts/cluster/storage_initializer.py), run for real with
podman the way a pod runs it: the controller's args `[uri, /mnt/models]`, the s3 environment
KServe's credential builder injects (pkg/credentials/s3), the image's own non-root user, and
/mnt/models an emptyDir-like folder of mode 0777.

The object store is a moto server on loopback (tests/cluster/object_store.py): it stands in for a cloud
object store (S3), a boundary that cannot exist on this machine. Everything else is real: the image built here from
kserve-storage 0.20.0, its boto3 client, the download and its error messages."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.cluster import storage_initializer
from scripts.containers.engine import detect
from tests.cluster.object_store import CREDENTIALS, MotoServer, tree

pytestmark = pytest.mark.integration

BUCKET, PREFIX = "models", "image-classifier/v1"
MOUNT = "/mnt/models"  # KServe's DefaultModelLocalMountPath: the controller's second arg
# A storage layout like `make archive`'s, with a nested folder, a file above boto3's 8 MiB multipart
# threshold (ranged GETs) and a text file; the bytes are random so a mix-up cannot pass.
LAYOUT = {
    "config/config.properties": b"inference_address=http://0.0.0.0:8085\nmodel_store=/mnt/models/model-store\n",
    "model-store/fashion-mnist.mar": os.urandom(9 * 1024 * 1024),
    "model-store/extra/nested/labels.json": b'["T-shirt/top", "Trouser"]\n',
}


def kserve_s3_env(endpoint: str) -> dict[str, str]:
    """What KServe v0.20's BuildSecretEnvs gives for a Secret with the annotations
    serving.kserve.io/s3-endpoint: 127.0.0.1:PORT, s3-usehttps: "0", s3-verifyssl: "0",
    s3-region: us-east-1 (getEndpointConfiguration turns the endpoint into both forms)."""
    host_port = endpoint.removeprefix("http://")
    return {**CREDENTIALS, "S3_USE_HTTPS": "0", "S3_ENDPOINT": host_port, "AWS_ENDPOINT_URL": f"http://{host_port}",
            "S3_VERIFY_SSL": "0", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def image() -> str:
    return storage_initializer.build()  # no engine or a failed build fails the tests


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start(timeout=60)
    try:
        server.upload(BUCKET, PREFIX, LAYOUT)
        yield server
    finally:
        server.stop()


# The chart's ClusterStorageContainer (templates/storage-container.yaml) runs it as the chart's uid,
# read-only root, no capabilities, no privilege escalation: podman's equivalents.
CHART_SECURITY = ("--user", "10001:10001", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


def run_initializer(image: str, endpoint: str, uri: str, models_dir: Path, *security: str):
    """The init container: image's entrypoint, args [uri, /mnt/models], the emptyDir rw; the image's
    own user unless `security` says otherwise."""
    models_dir.mkdir()
    models_dir.chmod(0o777)  # an emptyDir is 0777; the initializer runs as uid 1000
    env = [arg for k, v in kserve_s3_env(endpoint).items() for arg in ("-e", f"{k}={v}")]
    return detect().run("run", "--rm", "--network", "host", "-v", f"{models_dir}:{MOUNT}:rw", *security, *env,
                        image, uri, MOUNT, check=False, timeout=300)


def test_image_is_the_controllers_and_runs_as_non_root(image):
    assert image == f"docker.io/{storage_initializer.STORAGE_INITIALIZER_IMAGE}"  # what containerd calls it
    config = detect().run("image", "inspect", "--format", "{{.Config.User}} {{.Config.Entrypoint}}", image).stdout
    assert config.strip() == "1000 [/storage-initializer/scripts/initializer-entrypoint]"  # upstream's USER, ENTRYPOINT


def test_downloads_the_layout_byte_identical(image, s3, tmp_path):
    models_dir = tmp_path / "models"
    proc = run_initializer(image, s3.endpoint, f"s3://{BUCKET}/{PREFIX}", models_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree(models_dir) == LAYOUT
    assert {p.stat().st_uid for p in models_dir.rglob("*")} == {1000}  # written by the image's user, not root
    assert f"Successfully copied s3://{BUCKET}/{PREFIX} to {MOUNT}" in proc.stdout + proc.stderr


def test_runs_under_the_charts_restricted_security_context(image, s3, tmp_path):
    models_dir = tmp_path / "models"
    proc = run_initializer(image, s3.endpoint, f"s3://{BUCKET}/{PREFIX}", models_dir, *CHART_SECURITY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree(models_dir) == LAYOUT
    assert {p.stat().st_uid for p in models_dir.rglob("*")} == {10001}


@pytest.mark.parametrize("uri, message", [
    (f"s3://{BUCKET}/no-such-model", "Failed to fetch model. No model found in no-such-model."),
    ("s3://no-such-bucket/models", "S3 resource 'no-such-bucket' not found."),
], ids=["missing-object", "wrong-bucket"])
def test_missing_source_fails_and_names_it(image, s3, tmp_path, uri, message):
    models_dir = tmp_path / "models"
    proc = run_initializer(image, s3.endpoint, uri, models_dir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Storage initialization failed: {message}" in proc.stdout + proc.stderr
    assert tree(models_dir) == {}
