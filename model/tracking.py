"""Experiment tracking with MLflow: a local store by default (./mlruns/mlflow.db with artifacts
in ./mlruns/artifacts, or MLFLOW_TRACKING_URI; MLflow 3 refuses plain file stores), a server
with --mlflow-uri, nothing with --no-mlflow. Training logs the
run's parameters, per-epoch metrics, the split manifest, the evaluation report with its plots,
and the model checkpoint, and registers the checkpoint as a new version in the model registry
(model/registry.py)."""
from __future__ import annotations

import os
from pathlib import Path

from model import registry


class NoTracking:
    uri: str | None = None
    run_id: str | None = None

    def params(self, params: dict) -> None: ...
    def metrics(self, metrics: dict, step: int | None = None) -> None: ...
    def artifact(self, path: Path, folder: str | None = None) -> None: ...
    def register(self, name: str) -> str | None: ...
    def end(self, status: str = "FINISHED") -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.end("FAILED" if exc_type else "FINISHED")


class MlflowTracking(NoTracking):
    def __init__(self, uri: str, experiment: str, run_name: str | None = None):
        import mlflow  # slow to import: only when tracking is on

        self.mlflow = mlflow
        self.uri = uri
        # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI for the whole process: end() puts
        # it back, so a later run in the same process (a test, a notebook) finds its own default
        self.env_before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(experiment) is None:
            root = artifact_root(uri)
            mlflow.create_experiment(experiment, artifact_location=f"{root}/{experiment}" if root else None)
        mlflow.set_experiment(experiment)
        self.run_id = mlflow.start_run(run_name=run_name).info.run_id

    def params(self, params: dict) -> None:
        flat = {k: ("" if v is None else str(v))[:500] for k, v in params.items()}
        self.mlflow.log_params(flat)

    def metrics(self, metrics: dict, step: int | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        if Path(path).exists():
            self.mlflow.log_artifact(str(path), artifact_path=folder)

    def register(self, name: str) -> str:
        """A new version of registered model `name` from this run's checkpoint (logged first)."""
        return registry.register(self.uri, name, self.run_id)

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
        if self.env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self.env_before


def default_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = Path("mlruns").resolve()
    store.mkdir(exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """A local SQLite store keeps its artifacts beside the database; a server decides itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def start(enabled: bool, uri: str | None, experiment: str, run_name: str | None = None) -> NoTracking:
    return MlflowTracking(uri or default_uri(), experiment, run_name) if enabled else NoTracking()
