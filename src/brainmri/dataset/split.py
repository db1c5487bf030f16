"""Split stage: a leakage-free, stratified, grouped train/val/test split, and its audit.

Only images the dedup stage kept, with one of the four classes, are split;
with ``split.unknown_tumours`` also the tumours of unknown type (``tumor_unknown``,
e.g. Br35H "yes"), which training then uses as "some tumour" and test scores for
detection only. Images are grouped so that a
group never straddles two splits. Links that make groups:

- **patient**: images of one patient. A kept image has the patients of every
  image of its dedup cluster (a Kaggle copy of a figshare slice belongs to
  that figshare patient even when the copy, not the original, was kept);
  ids come from the ``.mat`` PIDs or a source's patient table.
- **linker**: for images with no patient, each joins its nearest neighbour of
  the same source and label if their thumbnails correlate at
  ``split.linker_correlation`` (``brainmri.dataset.linker``; precision measured on
  held-out figshare patients in ``metrics/linker_calibration.json``).
- **same picture**: any two kept images whose whole-image thumbnails correlate
  at ``split.same_picture_correlation`` (copies that dedup's core-frame
  fingerprint missed, e.g. a re-framed copy at another size).
- **similar slice**: kept images whose core-frame thumbnails correlate at
  ``split.group_correlation`` within the pHash radius ``split.group_max_hamming``.

Groups are then assigned greedily, largest first, to the split whose class
counts are furthest below their targets, which keeps class proportions close
to the whole. The order of equally sized groups comes from the seed.

After splitting, an audit recounts what crosses splits, independently of the
grouping: duplicate pairs (by the dedup criterion), same-picture pairs,
patients and linker links; the stage fails unless all are zero.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from ..config import CLASSES, EXTRA_LABELS, DedupConfig, SplitConfig
from ..errors import UserError
from .fingerprints import Fingerprints, confirmed_pairs
from .linker import correlated_pairs, nearest_neighbour_pairs, thumbnail_vectors

SPLITS = ("train", "val", "test")


class LeakageError(UserError, RuntimeError):
    """The split puts duplicates or one patient on both sides; the message gives the counts."""


def cluster_patients(dedup_manifest: pd.DataFrame) -> pd.Series:
    """Per dedup cluster, its members' patients as sorted ``"<source>:<id>"`` keys joined by ``;`` ("" for none)."""
    known = dedup_manifest[dedup_manifest["patient_id"].fillna("").astype(str) != ""]
    keys = known["source"].astype(str) + ":" + known["patient_id"].astype(str)
    joined = keys.groupby(known["cluster_id"].to_numpy()).agg(lambda k: ";".join(sorted(set(k))))
    return joined.reindex(dedup_manifest["cluster_id"].unique(), fill_value="")


def cluster_folds(dedup_manifest: pd.DataFrame) -> pd.Series:
    """Per dedup cluster, the patient-table fold of its members ("" for none; the first, in a cluster of several)."""
    folds = dedup_manifest["patient_fold"].fillna("").astype(str) if "patient_fold" in dedup_manifest else None
    if folds is None:
        return pd.Series("", index=dedup_manifest["cluster_id"].unique())
    known = dedup_manifest[folds != ""]
    first = known.groupby("cluster_id")["patient_fold"].agg(lambda f: sorted(map(str, f))[0])
    return first.reindex(dedup_manifest["cluster_id"].unique(), fill_value="").astype(str)


def _patient_links(patients: pd.Series) -> tuple[list[int], list[int]]:
    """Chain the rows that share any patient key."""
    keys = patients.str.split(";").explode()
    keys = keys[keys != ""]
    links_a, links_b = [], []
    for _, rows in pd.Series(keys.index.to_numpy()).groupby(keys.to_numpy()):
        links_a += [rows.iloc[0]] * (len(rows) - 1)
        links_b += rows.iloc[1:].tolist()
    return links_a, links_b


def grouping(
    table: pd.DataFrame, fingerprints: Fingerprints, thumbs: np.ndarray, dedup: DedupConfig, cfg: SplitConfig
) -> tuple[np.ndarray, dict[str, int], csr_matrix]:
    """Group id per row (connected components of the links in the module docstring), the count of each kind of
    link, and the link graph (rows x rows)."""
    n = len(table)
    links: dict[str, tuple] = {}
    if cfg.group_by_patient:
        links["patient"] = _patient_links(table["patients"])
        if cfg.linker_correlation is not None:
            unknown = np.flatnonzero(table["patients"].to_numpy() == "")
            cells = (table["source"].astype(str) + "/" + table["label"].astype(str)).to_numpy()[unknown]
            i, j, _ = nearest_neighbour_pairs(thumbs[unknown], cfg.linker_correlation, cells)
            links["linker"] = (unknown[i], unknown[j])
    if cfg.same_picture_correlation is not None:
        links["same_picture"] = correlated_pairs(thumbs, cfg.same_picture_correlation)[:2]
    if cfg.group_correlation is not None and n:
        links["similar_slice"] = confirmed_pairs(fingerprints, cfg.group_max_hamming, cfg.group_correlation)[:2]
    a = np.concatenate([np.asarray(pair[0], dtype=np.int64) for pair in links.values()] or [np.zeros(0, np.int64)])
    b = np.concatenate([np.asarray(pair[1], dtype=np.int64) for pair in links.values()] or [np.zeros(0, np.int64)])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)).tocsr()
    counts = {kind: len(pair[0]) for kind, pair in links.items()}
    return connected_components(graph, directed=False)[1], counts, graph


def assign_splits(labels: pd.Series, groups: np.ndarray, ratios: dict[str, float], seed: int) -> np.ndarray:
    """Greedy stratified group assignment; returns the split name per row."""
    counts = pd.crosstab(groups, labels.to_numpy())
    rng = np.random.default_rng(seed)
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


def split_column(table: pd.DataFrame, cfg: SplitConfig, seed: int, graph: csr_matrix | None = None) -> np.ndarray:
    """The split of each row: a held-out source, the configured ratios for the others, then train-only sources.

    - ``holdout_source`` (leave one source out): every group touching it is ``test``, and the others split
      train/val in the configured ratio, so nothing of it leaks into training.
    - ``train_only_sources``: the other sources are split first, on the groups their own links make (``graph``,
      the link graph of ``grouping``, restricted to them), exactly as they would be split without the
      train-only sources; then every group touching a train-only source goes to ``train``, taking along the
      few images of other sources linked to it. Their unseen patients, if any, are an external set's job.

    Without ``graph`` the ``group`` column's groups are used (a table read back from split.csv).
    """
    groups = table["group"].to_numpy()
    split = np.full(len(table), "", dtype=object)
    if cfg.holdout_source is not None:
        held = table["source"].to_numpy() == cfg.holdout_source
        split[np.isin(groups, groups[held])] = "test"
    train_only = table["source"].isin(cfg.train_only_sources).to_numpy()
    own = (split == "") & ~train_only
    if cfg.holdout_source is None:
        ratios = {s: getattr(cfg, s) for s in SPLITS}
    else:
        ratios = {"train": cfg.train / (cfg.train + cfg.val), "val": cfg.val / (cfg.train + cfg.val), "test": 0.0}
    rows = np.flatnonzero(own)
    own_groups = groups[rows] if graph is None else connected_components(graph[rows][:, rows], directed=False)[1]
    split[rows] = assign_splits(table["label"].iloc[rows], own_groups, ratios, seed)
    if train_only.any():
        split[np.isin(groups, groups[train_only]) & (split != "test")] = "train"
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


def audit(
    table: pd.DataFrame, fingerprints: Fingerprints, thumbs: np.ndarray, dedup: DedupConfig, cfg: SplitConfig
) -> dict:
    """Count what leaks across splits, recomputed from the images rather than trusted from the grouping.

    Patients are counted per source (``patients_in_several_splits_by_source``),
    with each kept image standing for the patients of its whole dedup cluster.
    """
    split = table["split"].to_numpy()
    i, j, _, _ = confirmed_pairs(fingerprints, dedup.max_hamming, dedup.min_correlation)
    cross = split[i] != split[j]
    keys = table["patients"].str.split(";").explode()
    keys = keys[keys != ""]
    spread = pd.Series(split[keys.index.to_numpy()]).groupby(keys.to_numpy()).nunique()
    straddling = spread[spread > 1]
    by_source = pd.Series(straddling.index.str.split(":").str[0]).value_counts().sort_index()
    result = {
        "cross_split_duplicate_pairs": int(cross.sum()),
        "patients_in_several_splits": int(len(straddling)),
        "patients_in_several_splits_by_source": {k: int(v) for k, v in by_source.items()},
        "examples": [
            [str(table["image_id"].iloc[a]), str(table["image_id"].iloc[b])]
            for a, b in zip(i[cross][:10], j[cross][:10], strict=True)
        ],
    }
    if cfg.same_picture_correlation is not None:
        a, b, _ = correlated_pairs(thumbs, cfg.same_picture_correlation)
        result["same_picture_pairs_across_splits"] = int((split[a] != split[b]).sum())
    if cfg.group_by_patient and cfg.linker_correlation is not None:
        unknown = np.flatnonzero(table["patients"].to_numpy() == "")
        cells = (table["source"].astype(str) + "/" + table["label"].astype(str)).to_numpy()[unknown]
        a, b, _ = nearest_neighbour_pairs(thumbs[unknown], cfg.linker_correlation, cells)
        result["linker_pairs_across_splits"] = int((split[unknown[a]] != split[unknown[b]]).sum())
    return result


def make_split(
    dedup_manifest: pd.DataFrame, fingerprints: Fingerprints, dedup: DedupConfig, cfg: SplitConfig, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Split the kept, classifiable images; return the split table and the report (audit included)."""
    kept = dedup_manifest[dedup_manifest["kept"].astype(bool)]
    splittable = (*CLASSES, *EXTRA_LABELS) if cfg.unknown_tumours else CLASSES
    table = kept[kept["label"].isin(splittable)].sort_values("image_id", kind="stable").reset_index(drop=True)
    table["patients"] = cluster_patients(dedup_manifest).reindex(table["cluster_id"]).fillna("").to_numpy()
    prints = fingerprints.subset(table["image_id"])
    thumbs = thumbnail_vectors(table["path"].tolist())
    table["group"], links, graph = grouping(table, prints, thumbs, dedup, cfg)
    table["split"] = split_column(table, cfg, seed, graph)
    if cfg.folds:
        table["fold"] = assign_folds(table, cfg.folds, seed)
    elif cfg.table_folds:
        table["fold"] = table_fold_column(table, cluster_folds(dedup_manifest))
    leakage = audit(table, prints, thumbs, dedup, cfg)
    group_sizes = table.groupby("group").size()
    with_patient = table["patients"] != ""
    report = {
        "images": int(len(table)),
        "excluded_not_a_class": {
            k: int(v) for k, v in kept.loc[~kept["label"].isin(splittable), "label"].value_counts().sort_index().items()
        },
        "groups": int(table["group"].nunique()),
        "largest_group": int(group_sizes.max()) if len(table) else 0,
        "group_sizes": {str(k): int(v) for k, v in group_sizes.value_counts().sort_index().items()},
        "links": links,
        "images_with_patient": {k: int(v) for k, v in table[with_patient].groupby("source").size().items()},
        "images_without_patient": {k: int(v) for k, v in table[~with_patient].groupby("source").size().items()},
        "sizes": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "holdout_source": cfg.holdout_source,
        "train_only_sources": list(cfg.train_only_sources),
        "folds": {int(k): int(v) for k, v in table["fold"].value_counts().sort_index().items()}
        if "fold" in table
        else {},
        "class_fraction": _fractions(table, "label"),
        "source_fraction": _fractions(table, "source"),
        "leakage": leakage,
    }
    return table, report


def table_fold_column(table: pd.DataFrame, folds_of_cluster: pd.Series) -> np.ndarray:
    """The patient tables' folds, numbered from 0 in sorted order, for rows whose cluster has one; -1 for the rest."""
    raw = folds_of_cluster.reindex(table["cluster_id"]).fillna("").to_numpy()
    names = sorted({f for f in raw if f}, key=lambda f: (len(f), f))
    number = {name: k for k, name in enumerate(names)}
    return np.array([number.get(f, -1) for f in raw], dtype=int)


def _fractions(table: pd.DataFrame, column: str) -> dict:
    result = {}
    for split in ("all", *SPLITS):
        rows = table if split == "all" else table[table["split"] == split]
        result[split] = {
            k: round(float(v), 4) for k, v in rows[column].value_counts(normalize=True).sort_index().items()
        }
    return result


def check_leakage(report: dict) -> None:
    """Raise ``LeakageError`` if the audit found anything crossing splits."""
    leakage = report["leakage"]
    counts = {k: v for k, v in leakage.items() if isinstance(v, int)}
    if any(counts.values()):
        found = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items() if v)
        raise LeakageError(f"split leaks ({found}), e.g. {leakage['examples'][:3]}")


SPLIT_COLUMNS = [
    "image_id",
    "path",
    "label",
    "source",
    "patient_id",
    "patients",
    "group",
    "split",
    "mask_path",
    "box",
    "original_path",
]


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
        "largest_group": report["largest_group"],
        "links": report["links"],
        "leakage": {k: v for k, v in report["leakage"].items() if k != "examples"},
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
