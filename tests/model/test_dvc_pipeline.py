"""The DVC pipeline (dvc.yaml, params.yaml) on a tiny configuration, run by the real `dvc` in a copy
of the repository under tmp_path (git + DVC state included, nothing written here): `dvc repro`
reruns a changed stage and what follows it, nothing else; a clean second run writes the same
outputs; `dvc exp run -S` records an experiment; the data travels to the local remote and back."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from model import data, train
from scripts.serve import archive

integration = pytest.mark.integration  # DVC, training and the archiver run as subprocesses

REPO = Path(__file__).resolve().parents[2]
COPIED = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "pyproject.toml", ".dvc/config",
          ".dvc/.gitignore", "model", "handlers", "scripts")
STAGES = {"prepare", "train", "evaluate", "export", "archive"}
# Seconds per stage instead of the full recipe's minutes; the Debian files may be elsewhere in CI.
TINY = {"prepare": {"source": str(data.DEBIAN_FASHION_MNIST)},
        "train": {"epochs": 1, "train_limit": 300, "test_limit": 200}}
MAR = "build/pipeline/serve/model-store/fashion-mnist.mar"


@dataclass
class Pipeline:
    """A copy of the repository's pipeline in its own git + DVC repository."""
    root: Path
    env: dict

    @classmethod
    def copy(cls, tmp: Path) -> Pipeline:
        root = tmp / "repo"
        for name in COPIED:
            src, dst = REPO / name, root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
        # The stages' `python` is this virtualenv's; HOME and DVC's config and site folders are
        # private, so no user setting changes the run and nothing is written outside tmp.
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "HOME": str(tmp / "home"), "DVC_GLOBAL_CONFIG_DIR": str(tmp / "dvc-global"),
               "DVC_SYSTEM_CONFIG_DIR": str(tmp / "dvc-system"),
               "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site"), "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
               "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
        pipeline = cls(root, env)
        pipeline.set_params(TINY)
        pipeline.run("git", "init", "-q")
        pipeline.run("git", "add", "-A")
        pipeline.run("git", "commit", "-qm", "pipeline")
        return pipeline

    def run(self, *args: str) -> str:
        done = subprocess.run(args, cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}"
        return done.stdout

    def dvc(self, *args: str) -> str:
        return self.run(sys.executable, "-m", "dvc", *args)

    def repro(self, *command: str) -> set[str]:
        """The stages `dvc repro` (or `command`) ran, from DVC's report on each: run, or skipped."""
        out = self.dvc(*command or ("repro",))
        ran = set(re.findall(r"Running stage '(\w+)'", out))
        skipped = set(re.findall(r"Stage '(\w+)' didn't change, skipping", out))
        assert ran | skipped == STAGES and not ran & skipped, out
        return ran

    def set_params(self, changes: dict) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for section, values in changes.items():
            params[section].update(values)
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def status(self) -> dict:
        return json.loads(self.dvc("status", "--json"))

    def lock(self) -> dict:
        return yaml.safe_load((self.root / "dvc.lock").read_text())["stages"]


def outs(lock: dict, stage: str) -> dict[str, str]:
    return {entry["path"]: entry["md5"] for entry in lock[stage]["outs"]}


def mar_members(root: Path) -> dict[str, bytes]:
    """The archive's files. MANIFEST.json is left out: the archiver stamps it with the time."""
    with zipfile.ZipFile(root / MAR) as z:
        return {name: z.read(name) for name in z.namelist() if name != "MAR-INF/MANIFEST.json"}


@dataclass
class FirstRun:
    pipeline: Pipeline
    ran: set[str]
    lock: dict
    mar: dict[str, bytes]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> FirstRun:
    pipeline = Pipeline.copy(tmp_path_factory.mktemp("dvc"))
    ran = pipeline.repro()
    return FirstRun(pipeline, ran, pipeline.lock(), mar_members(pipeline.root))


@integration
def test_the_first_repro_runs_every_stage_and_a_second_none(first):
    assert first.ran == STAGES
    # byte-compiling the code, as any import outside DVC does, changes no dependency
    first.pipeline.run(sys.executable, "-m", "compileall", "-q", "model", "handlers", "scripts")
    assert first.pipeline.repro() == set()
    assert first.pipeline.status() == {}
    metrics = json.loads(first.pipeline.dvc("metrics", "show", "--json"))
    summary = metrics[""]["data"]["runs/pipeline/metrics.json"]["data"]
    assert set(summary) == {"n", "accuracy", "macro_f1"} and summary["n"] == 10_000
    # the outputs live in git-ignored folders: DVC adds no .gitignore of its own, git sees only dvc.lock
    assert first.pipeline.run("git", "status", "--porcelain").split() == ["??", "dvc.lock"]


@integration
def test_a_late_parameter_reruns_its_stage_only_and_a_training_one_all_but_prepare(first):
    pipeline = first.pipeline
    before = pipeline.lock()
    pipeline.set_params({"archive": {"topk": 3}})
    assert set(pipeline.status()) == {"archive"}  # the directly changed stage, before anything runs
    assert pipeline.repro() == {"archive"}
    after = pipeline.lock()
    assert all(outs(after, s) == outs(before, s) for s in STAGES - {"archive"})
    assert after["archive"]["params"]["params.yaml"]["archive"]["topk"] == 3

    # A training parameter, as an experiment: training and every stage after it, not the data.
    assert pipeline.repro("exp", "run", "-S", "train.epochs=2") == STAGES - {"prepare"}
    tried = pipeline.lock()
    assert outs(tried, "prepare") == outs(after, "prepare")
    assert outs(tried, "train") != outs(after, "train")

    rows = json.loads(pipeline.dvc("exp", "show", "--json"))
    baseline = next(r for r in rows if r["rev"] != "workspace")
    experiments = [rev for e in baseline["experiments"] or [] for rev in e["revs"]]
    assert [e["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] for e in experiments] == [2]
    assert baseline["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    assert "accuracy" in experiments[0]["data"]["metrics"]["runs/pipeline/metrics.json"]["data"]


@integration
def test_a_clean_second_run_writes_the_same_outputs(first, tmp_path):
    again = Pipeline.copy(tmp_path)  # its own cache, so nothing comes from the first run's
    assert again.repro() == STAGES
    # dvc.lock: the same commands, parameters, dependencies and outputs (data, model, metrics, ...)
    lock, before_archive = again.lock(), STAGES - {"archive"}
    assert {s: lock[s] for s in before_archive} == {s: first.lock[s] for s in before_archive}
    assert lock["archive"] | {"outs": None} == first.lock["archive"] | {"outs": None}
    # the archive: every file of the .mar and config.properties, but not the archiver's timestamp
    assert mar_members(again.root) == first.mar
    assert (again.root / "build/pipeline/serve/config/config.properties").read_bytes() == \
        (first.pipeline.root / "build/pipeline/serve/config/config.properties").read_bytes()


@integration
def test_the_outputs_go_to_the_local_remote_and_come_back(first):
    pipeline = first.pipeline
    pipeline.dvc("push")
    remote = pipeline.root / "data/dvc-remote"  # .dvc/config: remote "local", the default
    assert any(p.is_file() for p in remote.rglob("*"))
    shutil.rmtree(pipeline.root / "data/pipeline")
    assert {"changed outs": {"data/pipeline": "deleted"}} in pipeline.status()["prepare"]
    shutil.rmtree(pipeline.root / ".dvc/cache")  # so that only the remote has it
    pipeline.dvc("pull")
    assert pipeline.status() == {}
    assert (pipeline.root / "data/pipeline/FashionMNIST/raw/train-images-idx3-ubyte").stat().st_size == 47_040_016


def test_params_yaml_holds_the_defaults_of_make_train_and_make_archive():
    """params.yaml says its values are the quick recipe's: the pipeline and `make train` +
    `make archive` build the same model and archive (0, not None, stands for no limit)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    train_parser, archive_parser = train.get_args_parser(), archive.get_args_parser()
    no_limit = {k: None for k, v in params["train"].items() if k.endswith("_limit") and v == 0}
    assert params["train"] | no_limit == {k: train_parser.get_default(k) for k in params["train"]}
    parsed = archive_parser.parse_args(["--checkpoint", "model.pt"])
    assert params["archive"] == {"model_name": archive.served_name(parsed), "version": archive.DEFAULT_VERSION,
                                 "topk": parsed.topk}
    assert Path(params["prepare"]["source"]) == data.DEBIAN_FASHION_MNIST or "FASHION_MNIST_DIR" in os.environ
