"""An S3 object store for tests: moto's server, standing in for a cloud object store (a boundary
that cannot exist on this machine). Everything that talks to it is real: KServe's storage
initializer image, its boto3 client, the chart's credential Secret."""
from __future__ import annotations

import sys
from pathlib import Path

import boto3
import requests

from scripts.serve.process import ServerProcess, free_ports

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}
REGION = "us-east-1"


class MotoServer(ServerProcess):
    """`python -m moto.server` on a free port of `host`, in its own process group, stopped by PID."""

    name = "moto"

    def __init__(self, run_dir: Path, host: str = "127.0.0.1"):
        super().__init__(run_dir, "moto.out")
        self.host = host
        self.port = free_ports(1)[0]
        self.endpoint = f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def ready(self) -> bool:
        try:
            return requests.get(self.endpoint, timeout=2).status_code == 200  # S3 ListBuckets
        except requests.RequestException:
            return False

    def upload(self, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
        """Create `bucket` (if new) and put each relative path → bytes under `prefix`."""
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=bucket)
        for key, body in files.items():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)


def tree(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every file under `root`."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
