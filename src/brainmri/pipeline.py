"""The DVC stages as functions: each reads its inputs, calls the library and writes its declared outputs.

``dvc.yaml`` runs ``stages/<name>.py``, which hands ``run_<name>`` to ``stage_main``; the CLI command of the
same name calls the same function. The paths written here are the ones ``dvc.yaml`` declares; keep the two in
step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .config import Config, load_config
from .core.hashing import file_digest
from .core.portable import is_pinned
from .errors import exit_with_one_line

METRICS_DIR = Path("metrics")
EXTERNAL_DIR = Path("build/external")
PARAMS = Path("params.yaml")
"""The params file DVC tracks: what every stage reads."""


def headline(stage: str, result: dict) -> str:
    """The one line a stage prints when it is done: its report, or the key figures of the long ones."""
    if stage == "dedup":
        result = {key: result[key] for key in ("images_in", "images_kept", "duplicate_clusters")}
    elif stage == "split":
        result = {"sizes": result["sizes"], "leakage": result["leakage"]["cross_split_duplicate_pairs"]}
    return f"{stage}: " + json.dumps(result, default=str)[:400]


def stage_main(stage: str, run: Callable[..., dict], *args: str, show: Callable[[dict], str] | None = None) -> None:
    """Run one DVC stage, as ``stages/<stage>.py`` does: ``run(config, *args)`` on params.yaml, then its
    headline (or ``show(result)``). An error a user can act on ends the stage with one line on stderr and exit
    status 1, as in the CLI; anything else is a bug and keeps its traceback."""
    try:
        result = run(load_config(PARAMS), *args)
    except Exception as error:
        exit_with_one_line(error)
    print(show(result) if show else headline(stage, result))


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def run_fetch(cfg: Config) -> dict:
    from .dataset.fetch import fetch_sources

    fetched = fetch_sources(cfg.active_sources(), cfg.fetch, cfg.synthetic)
    return {"files": len(fetched), "bytes": sum(f.bytes for f in fetched)}


def run_merge(cfg: Config) -> dict:
    from .dataset.fetch import fetched_archives, fetched_patient_tables
    from .dataset.merge import merge_sources

    report = merge_sources(
        fetched_archives(cfg.fetch.out_dir),
        cfg.active_sources(),
        cfg.merge,
        patient_tables=fetched_patient_tables(cfg.fetch.out_dir),
    )
    payload = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    payload.pop("wall_seconds", None)  # timing is not a reproducible output
    _write_json(METRICS_DIR / "merge.json", payload)
    return payload


def run_dedup(cfg: Config) -> dict:
    from .dataset.dedup import deduplicate, write_outputs

    manifest = pd.read_csv(
        cfg.merge.out_dir / "manifest.csv", dtype={"patient_id": str, "patient_fold": str}, keep_default_na=False
    )
    result, fingerprints = deduplicate(manifest, cfg.dedup, list(cfg.active_sources()))
    write_outputs(result, fingerprints, cfg.dedup.out_dir, METRICS_DIR / "dedup.json")
    return result.report


def run_split(cfg: Config) -> dict:
    from .dataset.datasheet import write_datasheet
    from .dataset.fingerprints import Fingerprints
    from .dataset.split import check_leakage, make_split, publish_dataset, write_outputs

    manifest = pd.read_csv(
        cfg.dedup.out_dir / "manifest.csv", dtype={"patient_id": str, "patient_fold": str}, keep_default_na=False
    )
    fingerprints = Fingerprints.load(cfg.dedup.out_dir / "fingerprints.npz")
    table, report = make_split(manifest, fingerprints, cfg.dedup, cfg.split, cfg.seed)
    write_outputs(table, report, cfg.split.out_dir, METRICS_DIR / "split.json")
    check_leakage(report)
    publish_dataset(table, cfg.split.dataset_dir)
    dedup_report = json.loads((cfg.dedup.out_dir / "report.json").read_text())
    write_datasheet(cfg, manifest, dedup_report, table, report, cfg.split.dataset_dir / "DATASHEET.md")
    return report


def data_version(split_csv: Path) -> str:
    """The data a model was trained on, named by the hash of the split file."""
    return "sha256:" + file_digest(split_csv)


def run_train(cfg: Config) -> dict:
    from .training.train import train_model

    split_csv = cfg.split.out_dir / "split.csv"
    table = pd.read_csv(split_csv, keep_default_na=False)
    summary = train_model(
        table,
        cfg.train,
        seed=cfg.seed,
        out_dir=cfg.train.out_dir,
        live_dir=METRICS_DIR / "train",
        data_version=data_version(split_csv),
    )
    _write_json(PROVENANCE, summary["environment"])
    return summary


PROVENANCE = Path("build/provenance/train.json")
"""Where the train stage records the machine it ran on: not a DVC output, not committed (it differs by machine)."""


def use_training_kernels(cfg: Config) -> None:
    """The same kernels and thread count as training, for stages whose output bytes depend on the model's arithmetic."""
    import torch

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.backends.mkldnn.enabled = not is_pinned()


def run_evaluate(cfg: Config) -> dict:
    from .evaluation.evaluate import evaluate_model

    use_training_kernels(cfg)
    table = pd.read_csv(cfg.split.out_dir / "split.csv", keep_default_na=False)
    return evaluate_model(
        table,
        cfg.train.checkpoint,
        cfg.evaluate,
        seed=cfg.seed,
        metrics_dir=METRICS_DIR,
        dedup_report=cfg.dedup.out_dir / "report.json",
        split_report=cfg.split.out_dir / "report.json",
    )


def external_set(cfg: Config, name: str):
    """The external set called ``name`` in ``evaluate.external``."""
    from .config import ConfigError

    for spec in cfg.evaluate.external:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in cfg.evaluate.external) or "none"
    raise ConfigError(f"no external set {name!r} in evaluate.external (listed: {known})")


def run_external(cfg: Config, name: str, **paths: Path | None) -> dict:
    """Evaluate one external set with the pipeline's checkpoint and the evaluate stage's files; ``paths``
    override them (``checkpoint``, ``ood``, ``temperature``, ``split_csv``, ``fingerprints``, ``out_dir``,
    ``metrics_path``; ``ood``/``temperature`` None: go without)."""
    from .evaluation.external import run_external as evaluate_set

    use_training_kernels(cfg)
    defaults = {
        "checkpoint": cfg.train.checkpoint,
        "ood": cfg.evaluate.ood_file,
        "temperature": cfg.evaluate.temperature_file,
        "split_csv": cfg.split.out_dir / "split.csv",
        "fingerprints": cfg.dedup.out_dir / "fingerprints.npz",
        "out_dir": EXTERNAL_DIR / name,
        "metrics_path": METRICS_DIR / "external" / f"{name}.json",
    }
    return evaluate_set(
        external_set(cfg, name),
        dedup=cfg.dedup,
        resamples=cfg.evaluate.bootstrap,
        seed=cfg.seed,
        **{**defaults, **paths},
    )
