"""End to end: the real DVC pipeline on a tiny synthetic demo in a scratch copy of the project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainmri.ops.reproducibility import check_reproducibility
from test_stage_deps import covered, module_path, stages

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, **env: str) -> str:
    full_env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], **env}
    result = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def make_project(where: Path) -> Path:
    """Copy the pipeline definition (not build outputs) into a fresh git + DVC repo with tiny params."""
    repo = where / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "data.dvc", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "stages", repo / "stages", ignore=ignore)
    shutil.copytree(ROOT / "src", repo / "src", ignore=ignore)
    (repo / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, repo / ".dvc" / name)
    (repo / "data").mkdir()
    (repo / "metrics").mkdir()
    for name in ("dedup_calibration.json", "linker_calibration.json"):
        shutil.copy(ROOT / "metrics" / name, repo / "metrics")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synthetic"].update(images_per_class=6)
    params["train"].update(epochs=2, image_size=32, batch_size=16)
    params["evaluate"].update(bootstrap=20)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "ci@example.invalid"], repo)
    run(["git", "config", "user.name", "ci"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "project"], repo)
    return repo


IMPORT_LOG = "first_repro_imports.log"
"""Beside the scratch project: the first ``dvc repro``'s output, with every stage's imports (``-X importtime``)."""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    repo = make_project(tmp_path_factory.mktemp("e2e"))
    full_env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run(
        ["dvc", "repro"],
        cwd=repo,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )  # one stream, so each stage's imports follow its "Running stage" line
    assert result.returncode == 0, f"dvc repro failed:\n{result.stdout[-6000:]}"
    (repo.parent / IMPORT_LOG).write_text(result.stdout)
    return repo


def test_every_module_a_stage_imported_is_one_of_its_dependencies(pipeline):
    """The runtime side of tests/test_stage_deps.py: what each stage really imported is in its dvc.yaml deps."""
    imported: dict[str, set[str]] = {}
    stage = None
    for line in (pipeline.parent / IMPORT_LOG).read_text().splitlines():
        if match := re.match(r"Running stage '(\S+)'", line):
            stage = imported.setdefault(match.group(1), set())
        elif (match := re.match(r"import time:.*\|\s+(brainmri\S*)$", line)) and stage is not None:
            stage.add(match.group(1))
    assert set(imported) == {"fetch", "merge", "dedup", "split", "train", "evaluate"}
    for name, modules in imported.items():
        deps = [str(dep) for dep in stages()[name]["deps"]]
        files = [module_path(module) for module in modules]
        assert len(files) > 5 and all(files), (name, modules)
        missing = sorted(str(f.relative_to(ROOT)) for f in files if not covered(f, deps))
        assert not missing, f"stage {name} imported these files, which dvc.yaml does not list as its deps: {missing}"


def test_pipeline_writes_metrics_and_plots(pipeline):
    metrics = json.loads((pipeline / "metrics" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
        assert metrics[split]["n"] > 0
    near = metrics["ood"][
        "near_distribution"
    ]  # CT-like and body-MRI-like inputs, refused or not by the demo model's check
    assert near["n"] == 13 and {"ct_head_like_brain_window", "mri_body_like"} <= set(near["per_kind"])
    assert set(metrics["localisation_methods"]) == {"gradcam", "gradcam_pp", "input_gradient"}
    merge = json.loads((pipeline / "metrics" / "merge.json").read_text())
    assert merge  # the merge report is a DVC metric
    dedup = json.loads((pipeline / "metrics" / "dedup.json").read_text())
    assert dedup["pairs"]["near"]["across_sources"] > 0, "the planted cross-source copies were not found"
    assert dedup["label_conflicts"]["clusters"] > 0, "the planted label conflicts were not found"
    split = json.loads((pipeline / "metrics" / "split.json").read_text())
    leakage = split["leakage"]
    assert leakage.pop("patients_in_several_splits_by_source") == {}
    assert leakage == {
        "cross_split_duplicate_pairs": 0,
        "patients_in_several_splits": 0,
        "same_picture_pairs_across_splits": 0,
        "linker_pairs_across_splits": 0,
    }
    datasheet = (pipeline / "build" / "dataset" / "DATASHEET.md").read_text()
    assert "Measured on a held-out calibration set of real images" in datasheet
    assert "are in the split as `tumor_unknown`" in datasheet  # split.unknown_tumours, the default
    assert list((pipeline / "build" / "dataset" / "test").glob("*/*.png"))
    assert list((pipeline / "build" / "dataset" / "test" / "tumor_unknown").glob("*.png"))
    shown = run(["dvc", "metrics", "show", "--json"], pipeline)
    assert "metrics/metrics.json" in shown
    html = pipeline / "plots_out"
    run(["dvc", "plots", "show", "-o", str(html)], pipeline)
    page = (html / "index.html").read_text()
    assert "Confusion matrix (test)" in page and "Loss per epoch" in page


def test_dedup_finds_every_planted_copy_and_merges_no_distinct_phantoms(pipeline):
    import pandas as pd

    truth = json.loads((pipeline / "build" / "raw" / "demo_truth.json").read_text())
    manifest = pd.read_csv(pipeline / "build" / "dedup" / "manifest.csv", keep_default_na=False)
    cluster = dict(zip(manifest["original_path"], manifest["cluster_id"], strict=True))
    key = lambda ref: f"{truth['archives'][ref['archive']]}/{ref['member']}"  # noqa: E731
    pairs = [
        p for kind in ("exact_copies", "near_copies", "cross_source_copies", "conflicting_labels") for p in truth[kind]
    ]
    usable = [
        (key(p["original"]), key(p["copy"]))
        for p in pairs
        if key(p["original"]) in cluster and key(p["copy"]) in cluster
    ]
    assert len(usable) > 20
    missed = [(a, b) for a, b in usable if cluster[a] != cluster[b]]
    assert not missed, f"{len(missed)} planted copies not merged, e.g. {missed[:3]}"
    phantom = {key(img): img["phantom"] for img in truth["images"]}
    manifest["phantom"] = manifest["original_path"].map(phantom)
    mixed = manifest.dropna(subset=["phantom"]).groupby("cluster_id")["phantom"].nunique()
    assert (mixed == 1).all(), f"{int((mixed > 1).sum())} clusters merge different phantoms"


def test_second_repro_has_nothing_to_do(pipeline):
    out = run(["dvc", "repro"], pipeline)
    assert "Running stage" not in out
    assert "Data and pipelines are up to date." in run(["dvc", "status"], pipeline)


def test_every_stage_reproduces(pipeline):
    lines = []
    assert check_reproducibility(pipeline, echo=lines.append), "\n".join(lines)
    assert "no dvc.lock committed at HEAD: nothing to compare" in lines  # the scratch project has none yet
    reruns = [line for line in lines if line.endswith(": reproduced")]
    assert reruns == [f"{s}: reproduced" for s in ("fetch", "merge", "dedup", "split", "train", "evaluate")]


def test_train_stage_ran_on_the_pinned_kernels_and_says_where(pipeline):
    kernels = json.loads((pipeline / "metrics" / "train" / "metrics.json").read_text())["kernels"]
    assert kernels["portable"] is True and kernels["aten_capability"] == "AVX2" and kernels["threads"] == 2
    machine = json.loads((pipeline / "build" / "provenance" / "train.json").read_text())["machine"]
    assert machine["cpu"] and "avx2" in machine["cpu_flags"]
    assert "provenance" not in run(["git", "status", "--porcelain", "--ignored"], pipeline).replace("build/", "")


def _commit_lock(repo: Path, edit=None) -> None:
    """Commit the workspace's dvc.lock (changed by ``edit`` on its parsed form first), then restore the workspace's."""
    lock = repo / "dvc.lock"
    text = lock.read_text()
    if edit is not None:
        parsed = yaml.safe_load(text)
        edit(parsed)
        lock.write_text(yaml.safe_dump(parsed, sort_keys=False))
    run(["git", "add", "-f", "dvc.lock", "metrics"], repo)
    run(["git", "commit", "-qm", "lock", "--allow-empty"], repo)
    lock.write_text(text)


def _set_model_hash(lock: dict) -> None:
    """As if another CPU had trained another model: train's output and evaluate's input."""
    for stage, key in (("train", "outs"), ("evaluate", "deps")):
        entry = next(e for e in lock["stages"][stage][key] if e["path"] == "build/model")
        entry["md5"] = "0" * 32 + ".dir"


def test_committed_lock_comparison_fails_on_an_injected_difference(pipeline):
    from brainmri.ops.reproducibility import compare_with_committed

    run(["dvc", "repro"], pipeline)
    _commit_lock(pipeline)
    lines = []
    assert compare_with_committed(pipeline, echo=lines.append), lines
    assert lines == [
        f"{s}: same as the committed lock" for s in ("fetch", "merge", "dedup", "split", "train", "evaluate")
    ]
    _commit_lock(pipeline, _set_model_hash)
    lines = []
    assert not compare_with_committed(pipeline, echo=lines.append)
    assert lines[4].startswith("train: DIFFERS from the committed lock (outputs build/model)"), lines
    assert lines[5] == "evaluate: DIFFERS from the committed lock (inputs build/model)", lines


def test_off_the_pinned_path_the_metrics_are_compared_within_tolerance(pipeline):
    from brainmri.ops.reproducibility import METRIC_TOLERANCE, compare_with_committed

    provenance = pipeline / "build" / "provenance" / "train.json"
    saved = provenance.read_text()
    fingerprint = json.loads(saved)
    fingerprint["kernels"]["portable"] = False  # as on a GPU with bf16
    provenance.write_text(json.dumps(fingerprint))
    try:
        _commit_lock(pipeline, _set_model_hash)
        lines = []
        assert compare_with_committed(pipeline, echo=lines.append), lines
        assert "as expected off the pinned CPU path; metrics within" in lines[4]
        metrics = pipeline / "metrics" / "metrics.json"
        text = metrics.read_text()
        changed = json.loads(text)
        changed["test"]["accuracy"] = max(0.0, changed["test"]["accuracy"] - 2 * METRIC_TOLERANCE)
        metrics.write_text(json.dumps(changed))
        lines = []
        assert not compare_with_committed(pipeline, echo=lines.append)
        assert "metrics OUT OF TOLERANCE: metrics/metrics.json:test.accuracy" in lines[5], lines
        metrics.write_text(text)
    finally:
        provenance.write_text(saved)
        _commit_lock(pipeline)


UNSEEDED_SPLIT = """import os
import brainmri.dataset.split as split_module
seeded = split_module.assign_splits
def unseeded(labels, groups, ratios, seed):
    return seeded(labels, groups, ratios, int.from_bytes(os.urandom(4)))
split_module.assign_splits = unseeded
"""
"""Put into the scratch project's split stage script: a split that draws a new seed on every run."""


def test_reproducibility_check_fails_on_an_unseeded_split(pipeline):
    stage = pipeline / "stages" / "split.py"
    original = stage.read_text()
    entry = "from brainmri.pipeline import run_split, stage_main"
    assert entry in original, "the split stage script changed: put the unseeded split before its pipeline import"
    stage.write_text(original.replace(entry, UNSEEDED_SPLIT + entry))
    try:
        lines = []
        assert not check_reproducibility(pipeline, echo=lines.append)
        assert any(line.startswith("split: DIFFERS") for line in lines), lines
    finally:
        stage.write_text(original)


def test_remote_round_trip(pipeline, tmp_path):
    run(["dvc", "repro"], pipeline)  # back to the seeded state after the previous test
    run(["dvc", "push", "-q"], pipeline)
    run(["git", "add", "-A"], pipeline)
    run(["git", "commit", "-qm", "pipeline"], pipeline)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pipeline), str(clone)], tmp_path)
    (clone / "data").mkdir(exist_ok=True)
    # the default remote is a folder beside the repository: point the clone at the same one
    storage = (pipeline / ".dvc" / "../../brainmri-dvc-storage").resolve()
    run(["dvc", "remote", "modify", "--local", "local", "url", str(storage)], clone)
    run(["dvc", "pull", "-q"], clone)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], clone)


def test_pull_request_report_shows_real_differences(pipeline):
    """Two commits of the demo (a changed learning rate): the report has params, metric diffs and plot PNGs."""
    run(["dvc", "repro"], pipeline)
    run(["git", "add", "-A"], pipeline)
    run(["git", "commit", "-qm", "base", "--allow-empty"], pipeline)
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 3
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], pipeline)
    run(["brainmri", "report", "--base", "HEAD", "--out", "report.md"], pipeline)
    report = (pipeline / "report.md").read_text()
    assert "train.lr" in report
    metric_rows = [line for line in report.splitlines() if line.startswith("| metrics/")]
    assert any("test.accuracy" in row or "val.accuracy" in row or "val.loss" in row for row in metric_rows), report
    images = sorted((pipeline / "report_plots").glob("*.png"))
    assert len(images) >= 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in images)
    assert all(f"report_plots/{p.name}" in report for p in images)


def test_an_external_set_is_a_stage_whose_files_are_dependencies(pipeline):
    """A set in evaluate.external (outside the repo, as ../shared/datasets is) becomes the stage external@0 and
    evaluate does not rerun; editing one of its files makes `dvc status` report that stage, `dvc repro` reruns it
    alone, and a forced rerun gives the same bytes."""
    import numpy as np

    from brainmri.ops.reproducibility import compare, pipeline_stages, snapshot
    from conftest import blob_image, write_grey_png

    rng = np.random.default_rng(0)
    outside = pipeline.parent / "hospital_x"
    for folder in ("yes", "no"):
        for k in range(3):
            write_grey_png(outside / folder / f"{k}.png", blob_image(rng, 64))
    original = (pipeline / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["evaluate"]["external"] = [
        {"name": "hospital_x", "path": "../hospital_x", "labels": {"yes": "tumor_unknown", "no": "no_tumor"}}
    ]
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = run(["dvc", "repro"], pipeline)
        assert "Running stage 'external@0'" in out and out.count("Running stage") == 1, out
        result = json.loads((pipeline / "metrics" / "external" / "hospital_x.json").read_text())
        assert result["clean"]["n"] == 6 and set(result["clean"]["tumour_detection"]) >= {
            "sensitivity",
            "specificity",
            "roc_auc",
        }
        assert "Data and pipelines are up to date." in run(["dvc", "status"], pipeline)

        write_grey_png(outside / "yes" / "0.png", blob_image(rng, 64))
        status = run(["dvc", "status"], pipeline)
        assert "external@0" in status and "modified" in status and "hospital_x" in status, status
        assert "evaluate:" not in status, status
        out = run(["dvc", "repro"], pipeline)
        assert "Running stage 'external@0'" in out and out.count("Running stage") == 1, out

        paths = pipeline_stages(pipeline.resolve())["external@0"]
        before = snapshot(paths, pipeline.resolve())
        run(["dvc", "repro", "--force", "--single-item", "external@0"], pipeline)
        assert compare("external@0", before, snapshot(paths, pipeline.resolve())).reproduced
    finally:
        (pipeline / "params.yaml").write_text(original)
