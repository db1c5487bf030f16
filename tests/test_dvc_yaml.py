"""dvc.yaml takes every stage folder from params.yaml: moving one there moves it in the pipeline, nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from brainmri.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_no_stage_folder_is_written_out_in_dvc_yaml():
    """Only the fixed names (build/external, metrics/) may be literal; every other build/ path is a ${...}."""
    text = (ROOT / "dvc.yaml").read_text()
    literal = sorted(set(re.findall(r"(?<![\w$/{.])build/[\w./-]*", text)) - {"build/external", "build/external/"})
    assert not literal, f"dvc.yaml writes these paths out instead of reading them from params.yaml: {literal}"


def test_artifacts_resolve_to_the_params_folders():
    from dvc.repo import Repo

    cfg = load_config(ROOT / "params.yaml")
    with Repo(str(ROOT)) as repo:
        artifacts = repo.artifacts.read()["dvc.yaml"]
    assert Path(artifacts["curated-dataset"].path) == cfg.split.dataset_dir
    assert Path(artifacts["tumour-classifier"].path) == cfg.train.out_dir / "model.pt"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["train"]["outs"][0] == "${train.out_dir}"
