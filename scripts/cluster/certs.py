"""Certificates and keys of the local control plane, made here with the openssl CLI (ECDSA P-256;
Debian's `openssl` package, in the base image; no Python dependency).

One cluster CA signs the API server's serving certificate and the client certificates (admin in
system:masters, controller-manager, scheduler, the API server's kubelet client), as in Kubernetes'
hack/local-up-cluster.sh; a separate front-proxy CA signs the request-header client of the
aggregation layer. The service-account token key pair is a plain key pair. Nothing is reused
between clusters: each state folder gets its own.
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 365
# The first address of the service range: the in-cluster `kubernetes` Service.
SERVICE_CIDR = "10.0.0.0/24"
API_SERVICE_IP = "10.0.0.1"
CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class CertError(RuntimeError):
    pass


@dataclass(frozen=True)
class Identity:
    """A client certificate: file stem, user (CN) and groups (O)."""
    stem: str
    user: str
    groups: tuple[str, ...] = ()


CLIENTS = (
    Identity("admin", "kubernetes-admin", ("system:masters",)),
    Identity("controller-manager", "system:kube-controller-manager"),
    Identity("scheduler", "system:kube-scheduler"),
    # The API server's client for the kubelet API (logs, exec, port-forward), for a later node
    # tier (to be bound to the system:kubelet-api-admin ClusterRole there).
    Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client"),
)


def openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CertError("the openssl CLI is missing (Debian package `openssl`)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CertError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()[-800:]}")


def _subject(cn: str, orgs: tuple[str, ...] = ()) -> str:
    return "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"


def make_ca(folder: Path, stem: str, cn: str) -> None:
    openssl("req", "-x509", *CURVE, "-keyout", f"{stem}.key", "-out", f"{stem}.crt",
            "-days", str(10 * DAYS), "-subj", _subject(cn),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign", cwd=folder)
    (folder / f"{stem}.key").chmod(0o600)


def issue(folder: Path, stem: str, ca: str, cn: str, orgs: tuple[str, ...] = (), *,
          server: bool = False, client: bool = False, dns: tuple[str, ...] = (),
          ips: tuple[str, ...] = ()) -> None:
    """A leaf certificate signed by the CA `ca` (its file stem), written as <stem>.crt/.key."""
    usages = (["serverAuth"] if server else []) + (["clientAuth"] if client else [])
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
           f"extendedKeyUsage={','.join(usages)}", "authorityKeyIdentifier=keyid"]
    if dns or ips:
        ext.append("subjectAltName=" + ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]))
    (folder / f"{stem}.ext").write_text("\n".join(ext) + "\n")
    openssl("req", "-new", *CURVE, "-keyout", f"{stem}.key", "-out", f"{stem}.csr",
            "-subj", _subject(cn, orgs), cwd=folder)
    openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-set_serial", "0x" + secrets.token_hex(16), "-days", str(DAYS),
            "-extfile", f"{stem}.ext", "-out", f"{stem}.crt", cwd=folder)
    (folder / f"{stem}.csr").unlink()
    (folder / f"{stem}.ext").unlink()
    (folder / f"{stem}.key").chmod(0o600)


def make_all(folder: Path) -> Path:
    """Every certificate and key the control plane needs, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    make_ca(folder, "ca", "image-classifier-cluster-ca")
    issue(folder, "apiserver", "ca", "kube-apiserver", server=True,
          dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local"),
          ips=("127.0.0.1", API_SERVICE_IP))
    # The controller-manager and scheduler serve /healthz on loopback; a certificate signed by
    # the cluster CA lets a client verify them instead of their self-signed default.
    issue(folder, "components-serving", "ca", "localhost", server=True, dns=("localhost",),
          ips=("127.0.0.1",))
    for ident in CLIENTS:
        issue(folder, ident.stem, "ca", ident.user, ident.groups, client=True)
    make_ca(folder, "front-proxy-ca", "image-classifier-front-proxy-ca")
    issue(folder, "front-proxy-client", "front-proxy-ca", "front-proxy-client", client=True)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key",
            cwd=folder)
    (folder / "sa.key").chmod(0o600)
    openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)
    return folder
