"""Calibrate the same-patient linker on images whose patients are known, and print a table.

Ground truth: the figshare images of a merged manifest (``build/merged/manifest.csv`` after
``fetch.source_set: mirror`` or ``public``), whose ``patient_id`` comes from the ``.mat`` PIDs or the
shared patient table. Patients are split in two halves (seeded, per label). For each feature and
linking rule, the threshold is the lowest whose link precision on the *calibration* half reaches
``--precision``; it is then measured on the *held-out* half: link precision and recall (pairs of one
label; positive = one patient), the recall of adjacent slices (consecutive file numbers of one
patient), and what the links do once chained into groups (connected components, as the split
uses them): the precision of the pairs a group puts together, and the largest group. The held-out
half is also measured with half of its images dropped (``held_out_sparse``), since a linker's
precision falls when a patient has fewer slices in the set.

Rules: ``threshold`` links every pair at or above the threshold; ``nearest`` links each image to its
most similar image (same label) when at or above it (``brainmri.dataset.linker.nearest_neighbour_pairs``).
Features: ``thumbN``: whole-image NxN grey thumbnail, Pearson correlation (``brainmri.dataset.linker``);
``cnn`` (with ``--cnn``, minutes): cosine of ImageNet EfficientNet-Lite0 pooled features, 160 px.

    python benchmarks/calibrate_linker.py --manifest build/merged/manifest.csv --cnn \
        --out metrics/linker_calibration.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from brainmri.dataset.linker import correlated_pairs, nearest_neighbour_pairs, thumbnail_vectors

GRID = np.round(np.arange(0.50, 0.996, 0.005), 3)


def cnn_vectors(paths: list[str], image_size: int = 160) -> np.ndarray:
    from brainmri.core.imaging import read_grey_png
    from brainmri.model.architectures import build_model
    from brainmri.model.inference import logits_and_features

    model = build_model("efficientnet_lite0", 1000, pretrained=True)
    features = []
    for start in range(0, len(paths), 256):
        images = [read_grey_png(p) for p in paths[start : start + 256]]
        features.append(logits_and_features(model, images, image_size)[1][-1])
    vectors = np.concatenate(features).astype(np.float32)
    vectors -= vectors.mean(axis=0)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def candidate_links(vectors: np.ndarray, table: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Every link the rule could make at the lowest threshold of the grid, with its truth."""
    labels = table["label"].to_numpy()
    if rule == "nearest":
        i, j, c = nearest_neighbour_pairs(vectors, float(GRID[0]), labels)
    else:
        i, j, c = correlated_pairs(vectors, float(GRID[0]), cells=labels)
    patient, number = table["patient_id"].to_numpy(), table["number"].to_numpy()
    same = patient[i] == patient[j]
    return pd.DataFrame({"i": i, "j": j, "c": c, "same": same, "adjacent": same & (np.abs(number[i] - number[j]) == 1)})


def positives(table: pd.DataFrame) -> tuple[int, int]:
    """Same-patient pairs, and adjacent-slice pairs, in a half (a patient has one label)."""
    sizes = table.groupby("patient_id").size().to_numpy()
    adjacent = sum(int((np.diff(np.sort(g.to_numpy())) == 1).sum()) for _, g in table.groupby("patient_id")["number"])
    return int((sizes * (sizes - 1) // 2).sum()), adjacent


def chained(links: pd.DataFrame, table: pd.DataFrame) -> dict:
    n = len(table)
    component = connected_components(
        coo_matrix((np.ones(len(links)), (links["i"], links["j"])), shape=(n, n)), directed=False
    )[1]
    sizes = np.bincount(component)
    together = pd.crosstab(component, table["patient_id"].to_numpy()).to_numpy()
    pairs, same = int((sizes * (sizes - 1) // 2).sum()), int((together * (together - 1) // 2).sum())
    return {
        "pair_precision": round(same / pairs, 4) if pairs else None,
        "largest_group": int(sizes.max()),
        "groups_of_size": {str(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True), strict=True)},
    }


def measure(links: pd.DataFrame, table: pd.DataFrame) -> dict:
    same, adjacent = positives(table)
    return {
        "images": len(table),
        "links": int(len(links)),
        "precision": round(float(links["same"].mean()), 4) if len(links) else None,
        "recall": round(float(links["same"].sum()) / same, 4),
        "adjacent_slice_recall": round(float(links["adjacent"].sum()) / adjacent, 4),
        "chained": chained(links, table),
    }


def calibrate(feature: str, vectors: np.ndarray, rule: str, halves: dict[str, pd.DataFrame], target: float) -> dict:
    candidates = {
        h: candidate_links(vectors[t.index.to_numpy()], t.reset_index(drop=True), rule) for h, t in halves.items()
    }
    chosen = next(
        (
            float(t)
            for t in GRID
            if (candidates["calibration"]["c"] >= t).any()
            and candidates["calibration"].loc[candidates["calibration"]["c"] >= t, "same"].mean() >= target
        ),
        None,
    )
    result = {"feature": feature, "rule": rule, "threshold": chosen}
    if chosen is not None:
        for half, table in halves.items():
            result[half] = measure(candidates[half][candidates[half]["c"] >= chosen], table.reset_index(drop=True))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path("build/merged/manifest.csv"))
    parser.add_argument(
        "--precision", type=float, default=0.97, help="link precision the threshold must reach on calibration patients"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn", action="store_true", help="also measure ImageNet CNN features (minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    manifest = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    table = manifest[manifest["source"].str.startswith("figshare") & (manifest["patient_id"] != "")].copy()
    table["number"] = table["original_path"].map(lambda p: int(PurePosixPath(p).stem))
    table = table.sort_values("number").reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    patients = table.groupby("patient_id")["label"].first()
    calibration: set[str] = set()
    for _, members in patients.groupby(patients):
        calibration |= set(rng.permutation(members.index.to_numpy())[: len(members) // 2])
    held = table[~table["patient_id"].isin(calibration)]
    halves = {
        "calibration": table[table["patient_id"].isin(calibration)],
        "held_out": held,
        "held_out_sparse": held.iloc[np.sort(rng.permutation(len(held))[: len(held) // 2])],
    }

    paths = table["path"].tolist()
    features = {"thumb16": thumbnail_vectors(paths, 16), "thumb32": thumbnail_vectors(paths, 32)}
    if args.cnn:
        features["cnn"] = cnn_vectors(paths)
    results = [
        calibrate(f, v, rule, halves, args.precision) for f, v in features.items() for rule in ("threshold", "nearest")
    ]
    report = {
        "ground_truth": f"{len(table)} figshare images of {table['patient_id'].nunique()} patients "
        f"({len(calibration)} calibration / {table['patient_id'].nunique() - len(calibration)} held out, "
        "split per label)",
        "links": "same label only; a link is right when both images are of one patient",
        "target_precision_on_calibration": args.precision,
        "results": results,
    }
    print(
        f"{'feature':8} {'rule':9} {'thresh':>6} {'half':15} {'links':>5} {'prec':>6} {'recall':>6} "
        f"{'adj.rec':>7} {'grp.prec':>8} {'largest':>7}"
    )
    for r in results:
        for half in halves:
            if half in r:
                m = r[half]
                print(
                    f"{r['feature']:8} {r['rule']:9} {r['threshold']:6.3f} {half:15} {m['links']:5d} "
                    f"{m['precision'] or 0:6.3f} {m['recall']:6.3f} {m['adjacent_slice_recall']:7.3f} "
                    f"{m['chained']['pair_precision'] or 0:8.3f} {m['chained']['largest_group']:7d}"
                )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
