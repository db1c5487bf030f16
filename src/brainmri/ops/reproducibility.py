"""Reproducibility as a checked property: every stage, rerun from its inputs, gives the same outputs.

For each stage in pipeline order, the check hashes the stage's declared
outputs (outs, metrics and plot files from ``dvc.yaml``), reruns the stage
alone with ``dvc repro --force --single-item``, hashes again and compares
file by file. All stages, model training and evaluation included, must be
bit-identical on CPU with the seed fixed (the train stage makes PyTorch
deterministic; see ``brainmri.training.train``). Then a plain ``dvc repro`` must have
nothing to do and ``dvc status`` must be clean.

Before that it answers a second question: does this machine's run give the
*committed* results? It compares the output hashes in the ``dvc.lock`` the
run wrote with those in ``dvc.lock`` at git HEAD, stage by stage. On CPU
with the kernels pinned (``brainmri.core.portable``) the answer must be exact
bytes on any x86-64 machine with AVX2. Where the run was not on that path
(a GPU with bf16, a CPU without AVX2, ``BRAINMRI_NATIVE_CPU=1``: the train
stage's fingerprint says ``portable: false``), the model and what depends on
it cannot be bit-identical by design; for those stages the metrics files are
compared with the committed ones instead, every rate in [0, 1] within
``METRIC_TOLERANCE``.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core.hashing import file_digest
from ..pipeline import PROVENANCE
from .dvc_run import run_dvc

UP_TO_DATE = "Data and pipelines are up to date."


@dataclass
class StageCheck:
    stage: str
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return not (self.changed or self.missing or self.added)

    def line(self) -> str:
        if self.reproduced:
            return f"{self.stage}: reproduced"
        parts = [
            f"{name}: {', '.join(files[:5])}{' …' if len(files) > 5 else ''}"
            for name, files in (("changed", self.changed), ("missing", self.missing), ("added", self.added))
            if files
        ]
        return f"{self.stage}: DIFFERS ({'; '.join(parts)})"


def pipeline_stages(repo: Path) -> dict[str, list[Path]]:
    """Stage name → the paths it writes (outs, metrics, plots), in ``dvc.yaml`` order."""
    return {name: outs for name, (outs, _) in _pipeline(repo).items()}


def _pipeline(repo: Path) -> dict[str, tuple[list[Path], list[Path]]]:
    """Stage name → (the paths it writes, the paths it reads), in ``dvc.yaml`` order.

    Asked of DVC rather than read from ``dvc.yaml``, so that stages generated
    by ``foreach`` (one per external set, ``external@0`` ...) are included
    under their own names, an empty ``foreach`` yields none, and paths written
    as ``${...}`` (params.yaml's ``out_dir`` keys) come resolved.
    """
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(repo)) as dvc:
        return {
            stage.name: ([Path(out.fs_path) for out in stage.outs], [Path(dep.fs_path) for dep in stage.deps])
            for stage in dvc.index.stages
            if isinstance(stage, PipelineStage)
        }


def snapshot(paths: list[Path], repo: Path) -> dict[str, str]:
    """sha256 of every file under ``paths``, keyed by its path relative to the repo."""
    hashes = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            hashes[str(file.relative_to(repo))] = file_digest(file)
    return hashes


def compare(stage: str, before: dict[str, str], after: dict[str, str]) -> StageCheck:
    return StageCheck(
        stage,
        changed=sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
        missing=sorted(before.keys() - after.keys()),
        added=sorted(after.keys() - before.keys()),
    )


def check_reproducibility(repo: Path, echo=print) -> bool:
    """Run the pipeline; compare its outputs with the committed lock, then rerun each stage and compare; one line
    per check."""
    repo = repo.resolve()  # DVC names outputs by resolved paths
    run_dvc(repo, "repro")
    echo("1. this machine's run against the committed dvc.lock (git HEAD):")
    ok = compare_with_committed(repo, echo)
    echo("2. each stage rerun from its inputs on this machine (bit-identical):")
    for stage, paths in pipeline_stages(repo).items():
        before = snapshot(paths, repo)
        run_dvc(repo, "repro", "--force", "--single-item", stage)
        check = compare(stage, before, snapshot(paths, repo))
        echo(check.line())
        ok &= check.reproduced
    again = run_dvc(repo, "repro")
    nothing_to_do = UP_TO_DATE in again and "Running stage" not in again
    echo("dvc repro again: " + ("nothing to do" if nothing_to_do else "RAN STAGES"))
    status = run_dvc(repo, "status")
    clean = UP_TO_DATE in status
    echo("dvc status: " + ("clean" if clean else "NOT CLEAN: " + " ".join(status.split())[:300]))
    return ok and nothing_to_do and clean


METRIC_TOLERANCE = 0.05
"""Absolute tolerance on each rate in [0, 1] (accuracy, F1, AUC, ECE ...) when a model cannot be bit-identical."""


def git_show(repo: Path, path: str, rev: str = "HEAD") -> str | None:
    """The text of ``path`` at ``rev``, or None when it is not committed there (or ``repo`` is no git repository)."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else None


def _lock_entries(lock: dict, stage: str, key: str) -> dict[str, str | None]:
    """path → md5 of a stage's ``outs`` or ``deps`` in a parsed dvc.lock."""
    return {entry["path"]: entry.get("md5") for entry in lock.get("stages", {}).get(stage, {}).get(key, [])}


def model_stages(repo: Path, root: str = "train") -> set[str]:
    """``root`` and every stage that reads, directly or not, what it writes (the ones a model feeds)."""
    stages = _pipeline(repo)
    found, changed = {root}, True
    while changed:
        changed = False
        for name, (_, deps) in stages.items():
            written = [out for feeder in found for out in stages[feeder][0]]
            if name not in found and any(dep == out or out in dep.parents for dep in deps for out in written):
                found.add(name)
                changed = True
    return found


def _rates(payload, prefix: str = "") -> dict[str, float]:
    """Every float leaf in [0, 1] of a metrics JSON, keyed by its dotted path."""
    if isinstance(payload, dict):
        return {k: v for key, value in payload.items() for k, v in _rates(value, f"{prefix}{key}.").items()}
    if isinstance(payload, float) and 0.0 <= payload <= 1.0 and math.isfinite(payload):
        return {prefix.rstrip("."): payload}
    return {}


def metrics_within_tolerance(repo: Path, paths: list[Path], tolerance: float = METRIC_TOLERANCE) -> list[str]:
    """The rates in the stage's metrics files that moved more than ``tolerance`` from the committed ones."""
    off = []
    for path in paths:
        relative = str(path.relative_to(repo))
        committed = git_show(repo, relative)
        if path.suffix != ".json" or not path.is_file() or committed is None:
            continue
        now, then = _rates(json.loads(path.read_text())), _rates(json.loads(committed))
        off += [
            f"{relative}:{key} {then[key]:.3f}→{now[key]:.3f}"
            for key in sorted(now.keys() & then.keys())
            if abs(now[key] - then[key]) > tolerance
        ]
    return off


def run_is_portable(repo: Path) -> bool:
    """Whether this machine's train run took the pinned CPU path (its fingerprint beside the model says so)."""
    provenance = repo / PROVENANCE
    if not provenance.is_file():
        return True  # no fingerprint: judge by the bytes
    return bool(json.loads(provenance.read_text())["kernels"].get("portable"))


def _differing(then: dict[str, str | None], now: dict[str, str | None]) -> list[str]:
    return sorted(path for path in then.keys() | now.keys() if then.get(path) != now.get(path))


def compare_with_committed(repo: Path, echo=print) -> bool:
    """Compare each stage's output hashes in the workspace's dvc.lock with git HEAD's; one line per stage."""
    committed_text = git_show(repo, "dvc.lock")
    if committed_text is None:
        echo("no dvc.lock committed at HEAD: nothing to compare")
        return True
    committed, current = yaml.safe_load(committed_text), yaml.safe_load((repo / "dvc.lock").read_text())
    tolerant = model_stages(repo) if not run_is_portable(repo) else set()
    ok = True
    for stage, paths in pipeline_stages(repo).items():
        then, now = _lock_entries(committed, stage, "outs"), _lock_entries(current, stage, "outs")
        if not then:
            echo(f"{stage}: not in the committed lock")
            continue
        differs = _differing(then, now)
        inputs = _differing(_lock_entries(committed, stage, "deps"), _lock_entries(current, stage, "deps"))
        if not differs and not inputs:
            echo(f"{stage}: same as the committed lock")
            continue
        what = "; ".join(
            f"{kind} {', '.join(files[:4])}" for kind, files in (("inputs", inputs), ("outputs", differs)) if files
        )
        if stage in tolerant:
            off = metrics_within_tolerance(repo, paths)
            verdict = (
                "metrics OUT OF TOLERANCE: " + "; ".join(off[:5])
                if off
                else f"metrics within {METRIC_TOLERANCE} of the committed"
            )
            echo(f"{stage}: differs from the committed lock ({what}) as expected off the pinned CPU path; {verdict}")
            ok &= not off
        else:
            echo(f"{stage}: DIFFERS from the committed lock ({what})")
            ok = False
    return ok
