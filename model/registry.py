"""The MLflow model registry between training and the archive: each tracked training run registers
its checkpoint as a new version of a registered model; the archive takes a version by alias or
number (`models:/<name>@<alias>`, `models:/<name>/<version>`), downloads its checkpoint and
records where it came from in model_spec.json.

    python -m model.train ... --mlflow-uri http://127.0.0.1:5000          # registers version N
    mlflow models: set the alias (UI, or MlflowClient().set_registered_model_alias(name, "champion", N))
    python -m scripts.serve.archive --from-registry models:/fashion-mnist@champion --registry-uri http://127.0.0.1:5000
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

CHECKPOINT_FOLDER = "model"  # the run's artifact folder that holds model.pt (model/train.py logs it)
CHECKPOINT_FILE = "model.pt"
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class RegistryError(RuntimeError):
    """The registry cannot give what was asked for, said in its terms."""


@dataclass(frozen=True)
class RegisteredVersion:
    registry: str  # the registry's URI
    name: str
    version: str
    run_id: str
    alias: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def client(registry_uri: str):
    """An MlflowClient, after a quick check that a server URI answers at all (MLflow's own client
    retries an unreachable server for minutes before it says so)."""
    if registry_uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{registry_uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as e:
            raise RegistryError(f"cannot reach the MLflow registry at {registry_uri}: {type(e).__name__}") from None
    from mlflow import MlflowClient  # slow to import: only when the registry is used

    return MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)


def register(registry_uri: str, name: str, run_id: str) -> str:
    """A new version of `name` (created if new) from the run's logged checkpoint; its number."""
    from mlflow.exceptions import MlflowException

    c = client(registry_uri)
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="image classifier checkpoints (model/train.py)")
    return str(c.create_model_version(name, source=f"runs:/{run_id}/{CHECKPOINT_FOLDER}", run_id=run_id).version)


def resolve(model_uri: str, registry_uri: str) -> RegisteredVersion:
    """The version `model_uri` names now (an alias moves; a number does not)."""
    from mlflow.exceptions import MlflowException

    m = MODEL_URI.match(model_uri)
    if m is None:
        raise RegistryError(f"not a registry model URI: {model_uri!r} (models:/<name>@<alias> or models:/<name>/<version>)")
    name, alias, number = m["name"], m["alias"], m["version"]
    c = client(registry_uri)
    try:
        c.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r} in {registry_uri}") from None
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, number)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {number} (deleted, or never registered)"
        have = sorted(c.get_registered_model(name).aliases)
        raise RegistryError(f"registered model {name!r} has no {what}"
                            + (f"; its aliases: {', '.join(have)}" if have else "; it has no aliases")) from None
    if not mv.run_id:
        raise RegistryError(f"{name} version {mv.version} has no training run: not one model/train.py registered")
    return RegisteredVersion(registry_uri, name, str(mv.version), mv.run_id, alias)


def download_checkpoint(version: RegisteredVersion, dst: Path) -> Path:
    """The version's checkpoint (the run's model/model.pt), downloaded into `dst`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{version.run_id}/{CHECKPOINT_FOLDER}", dst_path=str(dst),
            tracking_uri=version.registry)
    except (MlflowException, OSError) as e:
        raise RegistryError(f"{version.name} version {version.version}: cannot download its checkpoint "
                            f"from run {version.run_id}: {e}") from None
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise RegistryError(f"{version.name} version {version.version}: run {version.run_id} logged no "
                            f"{CHECKPOINT_FOLDER}/{CHECKPOINT_FILE}")
    return path
