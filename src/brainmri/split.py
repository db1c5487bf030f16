"""Split stage: a leakage-free, stratified, grouped train/val/test split, and its audit.

Only images the dedup stage kept, with one of the four classes, are split
(``tumor_unknown`` cannot be a training label). Images are grouped so that a
group never straddles two splits: one group per patient (where the source has
patient ids) joined with every pair of kept images whose thumbnails still
correlate at ``split.group_correlation`` within the looser pHash radius
``split.group_max_hamming`` (neighbouring slices of one scan that dedup
rightly kept apart but that would leak anatomy across splits). This catches
only part of the neighbours (on the real figshare JPEGs, which carry no
patient id, about one consecutive file pair in eight); patient ids, where a
source has them, are the reliable grouping.
Groups are then assigned greedily, largest first, to the split whose class
counts are furthest below their targets, which keeps class proportions close
to the whole. The order of equally sized groups comes from the seed.

After splitting, an audit counts duplicate pairs (by the dedup criterion) and
patients across splits; the stage fails unless both are zero.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .config import CLASSES, DedupConfig, SplitConfig
from .features import Fingerprints, confirmed_pairs

SPLITS = ("train", "val", "test")
UNSEEDED_FLAG = "BRAINMRI_TEST_UNSEEDED_SPLIT"
"""Test-only: set to 1 to drop the seed from the split, so tests can show the reproducibility check fails."""


class LeakageError(RuntimeError):
    """The split puts duplicates or one patient on both sides; the message gives the counts."""


def grouping(table: pd.DataFrame, fingerprints: Fingerprints, dedup: DedupConfig, cfg: SplitConfig) -> np.ndarray:
    """Group id per row: connected components of same-patient and similar-slice links."""
    n = len(table)
    links_a, links_b = [], []
    if cfg.group_by_patient:
        patient = (table["source"].astype(str) + ":" + table["patient_id"].fillna("").astype(str)).where(
            table["patient_id"].fillna("").astype(str) != ""
        )
        for _, rows in pd.Series(np.arange(n)).groupby(patient.to_numpy()):
            links_a += [rows.iloc[0]] * (len(rows) - 1)
            links_b += rows.iloc[1:].tolist()
    if cfg.group_correlation is not None and n:
        i, j, _, _ = confirmed_pairs(fingerprints, cfg.group_max_hamming, cfg.group_correlation)
        links_a += i.tolist()
        links_b += j.tolist()
    graph = coo_matrix((np.ones(len(links_a)), (links_a, links_b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def assign_splits(labels: pd.Series, groups: np.ndarray, ratios: dict[str, float], seed: int) -> np.ndarray:
    """Greedy stratified group assignment; returns the split name per row."""
    counts = pd.crosstab(groups, labels.to_numpy())
    rng = np.random.default_rng(None if os.environ.get(UNSEEDED_FLAG) == "1" else seed)
    shuffled = counts.index.to_numpy()[rng.permutation(len(counts))]
    sizes = counts.loc[shuffled].sum(axis=1).to_numpy()
    order = shuffled[np.argsort(-sizes, kind="stable")]
    totals = counts.sum(axis=0).to_numpy(dtype=float)
    targets = np.array([ratios[s] * totals for s in SPLITS])
    current = np.zeros_like(targets)
    chosen = {}
    for group in order:
        row = counts.loc[group].to_numpy(dtype=float)
        deficit = ((targets - current) / np.maximum(targets, 1e-9) * row).sum(axis=1)
        best = int(np.argmax(deficit))
        chosen[group] = SPLITS[best]
        current[best] += row
    return np.array([chosen[g] for g in groups])


def holdout_split(table: pd.DataFrame, cfg: SplitConfig, seed: int) -> np.ndarray:
    """Leave one source out: all its images are ``test``; the others split train/val in the configured ratio.

    Groups touching the held-out source go to test whole, so nothing of it leaks into training.
    """
    held = table["source"].to_numpy() == cfg.holdout_source
    held_groups = np.isin(table["group"].to_numpy(), table.loc[held, "group"].to_numpy())
    split = np.full(len(table), "test", dtype=object)
    rest = ~held_groups
    ratios = {"train": cfg.train / (cfg.train + cfg.val), "val": cfg.val / (cfg.train + cfg.val), "test": 0.0}
    split[rest] = assign_splits(table.loc[rest, "label"], table.loc[rest, "group"].to_numpy(), ratios, seed)
    return split.astype(str)


def assign_folds(table: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold number (0..folds-1) of each train/val row for grouped, stratified cross-validation; -1 for test."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.full(len(table), -1, dtype=int)
    rows = np.flatnonzero(table["split"].to_numpy() != "test")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for number, (_, held) in enumerate(
        splitter.split(rows, table["label"].to_numpy()[rows], table["group"].to_numpy()[rows])
    ):
        fold[rows[held]] = number
    return fold


def audit(table: pd.DataFrame, fingerprints: Fingerprints, dedup: DedupConfig) -> dict:
    """Count what leaks across splits: duplicate pairs by the dedup criterion, and shared patients."""
    i, j, _, _ = confirmed_pairs(fingerprints, dedup.max_hamming, dedup.min_correlation)
    split = table["split"].to_numpy()
    cross = split[i] != split[j]
    with_patient = table[table["patient_id"].fillna("").astype(str) != ""]
    keys = with_patient["source"].astype(str) + ":" + with_patient["patient_id"].astype(str)
    straddling = int((with_patient.groupby(keys.to_numpy())["split"].nunique() > 1).sum())
    return {
        "cross_split_duplicate_pairs": int(cross.sum()),
        "patients_in_several_splits": straddling,
        "examples": [
            [str(table["image_id"].iloc[a]), str(table["image_id"].iloc[b])] for a, b in zip(i[cross][:10], j[cross][:10])
        ],
    }


def make_split(
    dedup_manifest: pd.DataFrame, fingerprints: Fingerprints, dedup: DedupConfig, cfg: SplitConfig, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Split the kept, classifiable images; return the split table and the report (audit included)."""
    kept = dedup_manifest[dedup_manifest["kept"].astype(bool)]
    table = kept[kept["label"].isin(CLASSES)].sort_values("image_id", kind="stable").reset_index(drop=True)
    prints = fingerprints.subset(table["image_id"])
    table["group"] = grouping(table, prints, dedup, cfg)
    if cfg.holdout_source is None:
        ratios = {s: getattr(cfg, s) for s in SPLITS}
        table["split"] = assign_splits(table["label"], table["group"].to_numpy(), ratios, seed)
    else:
        table["split"] = holdout_split(table, cfg, seed)
    if cfg.folds:
        table["fold"] = assign_folds(table, cfg.folds, seed)
    leakage = audit(table, prints, dedup)
    report = {
        "images": int(len(table)),
        "excluded_not_a_class": {k: int(v) for k, v in kept.loc[~kept["label"].isin(CLASSES), "label"].value_counts().sort_index().items()},
        "groups": int(table["group"].nunique()),
        "largest_group": int(table.groupby("group").size().max()) if len(table) else 0,
        "sizes": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "holdout_source": cfg.holdout_source,
        "folds": {int(k): int(v) for k, v in table["fold"].value_counts().sort_index().items()} if cfg.folds else {},
        "class_fraction": _fractions(table, "label"),
        "source_fraction": _fractions(table, "source"),
        "leakage": leakage,
    }
    return table, report


def _fractions(table: pd.DataFrame, column: str) -> dict:
    result = {}
    for split in ("all", *SPLITS):
        rows = table if split == "all" else table[table["split"] == split]
        result[split] = {k: round(float(v), 4) for k, v in rows[column].value_counts(normalize=True).sort_index().items()}
    return result


def check_leakage(report: dict) -> None:
    """Raise ``LeakageError`` if the audit found anything crossing splits."""
    leakage = report["leakage"]
    if leakage["cross_split_duplicate_pairs"] or leakage["patients_in_several_splits"]:
        raise LeakageError(
            f"split leaks: {leakage['cross_split_duplicate_pairs']} duplicate pair(s) and "
            f"{leakage['patients_in_several_splits']} patient(s) across splits, e.g. {leakage['examples'][:3]}"
        )


SPLIT_COLUMNS = ["image_id", "path", "label", "source", "patient_id", "group", "split", "mask_path", "box", "original_path"]


def split_columns(table: pd.DataFrame) -> list[str]:
    """The columns written to split.csv (``fold`` only when folds are on)."""
    return SPLIT_COLUMNS + (["fold"] if "fold" in table.columns else [])


def publish_dataset(table: pd.DataFrame, dataset_dir: Path) -> None:
    """Lay the curated dataset out as ``<split>/<class>/<image_id>.png`` (hard links where possible)."""
    import shutil

    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    for row in table.itertuples():
        target = dataset_dir / row.split / row.label / f"{row.image_id}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(row.path, target)
        except OSError:
            shutil.copyfile(row.path, target)
    table[split_columns(table)].to_csv(dataset_dir / "manifest.csv", index=False)


def write_outputs(table: pd.DataFrame, report: dict, out_dir: Path, metrics_path: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table[split_columns(table)].to_csv(out_dir / "split.csv", index=False)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    metrics = {
        "images": report["images"],
        "sizes": report["sizes"],
        "leakage": {k: v for k, v in report["leakage"].items() if k != "examples"},
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
