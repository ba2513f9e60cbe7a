"""KServe v0.20.0's storage-initializer image, built here because no image registry is reachable.

The KServe controller injects this image (scripts/cluster/kserve.py STORAGE_INITIALIZER_IMAGE) as
the init container that copies a storageUri (s3://, gs://, ...) into /mnt/models, with args
`<src-uri> <dest-path>`; our local containerd takes its images from podman. The recipe follows
upstream's python/storage-initializer.Dockerfile at v0.20.0: a Python 3.11 bookworm venv at
/prod_venv holding kserve-storage with the versions of upstream's python/storage/uv.lock (installed
--no-deps: exactly those wheels, never anything else such as torch; then `pip check`), user
kserve (uid 1000) owning /mnt, WORKDIR /work, USER 1000, and upstream's initializer-entrypoint.
Left out: the Kerberos/HDFS extras (need gcc and libkrb5-dev), the third-party licence report and
the confidential-model decryption (jwcrypto and a TEE's Confidential Data Hub): the entrypoint
refuses CONFIDENTIAL_ENABLED=true rather than skip decryption silently.

    python -m scripts.cluster.storage_initializer            # image name and whether it is built
    python -m scripts.cluster.storage_initializer --build    # build it (cached by a recipe label)
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from scripts.cluster.kserve import STORAGE_INITIALIZER_IMAGE
from scripts.containers import base_images
from scripts.containers.engine import EngineError, detect
from scripts.deploy.images import engine_mounts

# Fully qualified: the name containerd and the kubelet give the controller's short name.
IMAGE = f"docker.io/{STORAGE_INITIALIZER_IMAGE}"
RECIPE_LABEL = "io.image-classifier.recipe"
# kserve/kserve v0.20.0 python/storage/uv.lock for CPython 3.11 on Linux (async-timeout and
# colorama are for Python < 3.11 and Windows; jwcrypto only for the confidential extra).
LOCKED = """
aiohappyeyeballs==2.6.1 aiohttp==3.12.15 aiosignal==1.4.0 attrs==25.3.0 azure-core==1.41.0
azure-identity==1.23.0 azure-storage-blob==12.25.1 azure-storage-file-share==12.21.0 boto3==1.38.33
botocore==1.38.33 cachetools==5.5.2 certifi==2025.4.26 cffi==2.0.0 charset-normalizer==3.4.2
cryptography==46.0.5 dulwich==1.0.0 filelock==3.18.0 frozenlist==1.7.0 fsspec==2025.5.1
google-api-core==2.25.0 google-auth==2.40.3 google-cloud-core==2.4.3 google-cloud-storage==2.19.0
google-crc32c==1.7.1 google-resumable-media==2.7.2 googleapis-common-protos==1.70.0 hf-transfer==0.1.9
hf-xet==1.5.1 huggingface-hub==0.32.4 idna==3.10 isodate==0.7.2 jmespath==1.0.1 kserve-storage==0.20.0
msal==1.32.3 msal-extensions==1.3.1 multidict==6.6.4 packaging==25.0 propcache==0.3.2 proto-plus==1.26.1
protobuf==6.31.1 pyasn1==0.6.3 pyasn1-modules==0.4.2 pycparser==2.22 pyjwt==2.12.1
python-dateutil==2.9.0.post0 pyyaml==6.0.2 requests==2.32.4 rsa==4.9.1 s3transfer==0.13.0 six==1.17.0
tqdm==4.67.1 typing-extensions==4.14.0 urllib3==2.4.0 yarl==1.20.1
""".split()

# Upstream's python/storage-initializer/scripts/initializer-entrypoint, less the confidential part.
ENTRYPOINT = '''#!/usr/bin/env python3
import os
import sys

from kserve_storage import Storage
from kserve_storage.logging import configure_logging, logger

configure_logging()

if len(sys.argv) < 3 or len(sys.argv) % 2 != 1:
    print("Usage: initializer-entrypoint src_uri_0 dest_path_0 ... src_uri_n dest_path_n")
    sys.exit(1)
if os.environ.get("CONFIDENTIAL_ENABLED", "").lower() == "true":
    logger.error("confidential model decryption is not part of this storage-initializer build")
    sys.exit(1)

src_uris = sys.argv[1::2]
dest_paths = sys.argv[2::2]
logger.info("Initializing, args: (src_uri, dest_path): %s", list(zip(src_uris, dest_paths)))
for dest in dest_paths:
    if dest:
        os.makedirs(dest, exist_ok=True)

try:
    Storage.download_files(src_uris, dest_paths)
except RuntimeError as e:
    logger.error("Storage initialization failed: %s", e)
    sys.exit(1)
except Exception as e:
    logger.error("Unexpected error during storage initialization: %s", e)
    sys.exit(1)
'''

CONTAINERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ENV VIRTUAL_ENV=/prod_venv PATH="/prod_venv/bin:$PATH"
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv $VIRTUAL_ENV && \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 pip install --no-cache-dir --no-deps --only-binary :all: \\
        -r /tmp/requirements.lock && pip check && rm /tmp/requirements.lock
RUN useradd kserve -m -u 1000 -d /home/kserve
COPY initializer-entrypoint /storage-initializer/scripts/initializer-entrypoint
RUN chmod +x /storage-initializer/scripts/initializer-entrypoint && mkdir /work && chown -R kserve:kserve /mnt
WORKDIR /work
USER 1000
ENTRYPOINT ["/storage-initializer/scripts/initializer-entrypoint"]
"""


def recipe_hash(base_image: str) -> str:
    return hashlib.sha256("\n".join([base_image, CONTAINERFILE, ENTRYPOINT, *LOCKED]).encode()).hexdigest()[:16]


def built_recipe(engine) -> str | None:
    proc = engine.run("image", "inspect", "--format", f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', IMAGE, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build(engine=None, log=print) -> str:
    """Build IMAGE unless an image of the same recipe is there; returns its name."""
    engine = engine or detect()
    base = base_images.debian_python(engine)
    recipe = recipe_hash(base)
    if built_recipe(engine) == recipe:
        log(f"[storage-initializer] {IMAGE} is up to date (recipe {recipe})")
        return IMAGE
    log(f"[storage-initializer] building {IMAGE} from {base} (kserve-storage==0.20.0 + {len(LOCKED) - 1} locked wheels)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="storage-initializer-") as ctx:
        (Path(ctx) / "Containerfile").write_text(CONTAINERFILE)
        (Path(ctx) / "requirements.lock").write_text("\n".join(LOCKED) + "\n")
        (Path(ctx) / "initializer-entrypoint").write_text(ENTRYPOINT)
        mounts = [arg for m in engine_mounts(engine) for arg in ("-v", m)]  # the host's pip CA, no layer holds it
        proc = engine.run("build", *engine.build_flags, *mounts, "--build-arg", f"BASE_IMAGE={base}",
                          "--label", f"{RECIPE_LABEL}={recipe}", "-t", IMAGE, "-f", f"{ctx}/Containerfile", ctx,
                          check=False, timeout=1800)
    if proc.returncode != 0:
        raise EngineError(f"build of {IMAGE} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    log(f"[storage-initializer] {IMAGE} built in {time.monotonic() - started:.0f} s, "
        f"{engine.image_size(IMAGE) / 1e6:.0f} MB")
    return IMAGE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", action="store_true", help="build the image (skipped when up to date)")
    args = p.parse_args(argv)
    try:
        if args.build:
            build()
        else:
            found = built_recipe(detect())
            print(IMAGE, "up to date" if found == recipe_hash(base_images.debian_python_name()) else
                  "not built (--build builds it)" if found is None else "stale: another recipe (--build rebuilds it)")
    except EngineError as e:
        print(f"storage-initializer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
