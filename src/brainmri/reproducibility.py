"""Reproducibility as a checked property: every stage, rerun from its inputs, gives the same outputs.

For each stage in pipeline order, the check hashes the stage's declared
outputs (outs, metrics and plot files from ``dvc.yaml``), reruns the stage
alone with ``dvc repro --force --single-item``, hashes again and compares
file by file. All stages, model training and evaluation included, must be
bit-identical on CPU with the seed fixed (the train stage makes PyTorch
deterministic; see ``brainmri.train``). Then a plain ``dvc repro`` must have
nothing to do and ``dvc status`` must be clean.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

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
        parts = [f"{name}: {', '.join(files[:5])}{' …' if len(files) > 5 else ''}" for name, files in
                 (("changed", self.changed), ("missing", self.missing), ("added", self.added)) if files]
        return f"{self.stage}: DIFFERS ({'; '.join(parts)})"


def pipeline_stages(repo: Path) -> dict[str, list[Path]]:
    """Stage name → the paths it writes (outs, metrics, plots), in ``dvc.yaml`` order.

    Asked of DVC rather than read from ``dvc.yaml``, so that stages generated
    by ``foreach`` (one per external set, ``external@0`` ...) are included
    under their own names, and an empty ``foreach`` yields none.
    """
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(repo)) as dvc:
        return {
            stage.name: [Path(out.fs_path) for out in stage.outs]
            for stage in dvc.index.stages
            if isinstance(stage, PipelineStage)
        }


def snapshot(paths: list[Path], repo: Path) -> dict[str, str]:
    """sha256 of every file under ``paths``, keyed by its path relative to the repo."""
    hashes = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            hashes[str(file.relative_to(repo))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def compare(stage: str, before: dict[str, str], after: dict[str, str]) -> StageCheck:
    return StageCheck(
        stage,
        changed=sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
        missing=sorted(before.keys() - after.keys()),
        added=sorted(after.keys() - before.keys()),
    )


def check_reproducibility(repo: Path, echo=print) -> bool:
    """Run the pipeline, rerun each stage from its inputs and compare; print one line per check."""
    repo = repo.resolve()  # DVC names outputs by resolved paths
    run_dvc(repo, "repro")
    ok = True
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
