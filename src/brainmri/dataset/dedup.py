"""Dedup stage: cluster exact and near-duplicate images and keep one image per cluster.

Two images are duplicates when their decoded pixels are identical (same
``sha256``) or when the pHashes of their core frames are within
``dedup.max_hamming`` bits *and* their grey thumbnails correlate at least
``dedup.min_correlation`` (see ``brainmri.dataset.fingerprints``; the thresholds and their
measured precision and recall on real images are in ``DedupConfig`` and
``metrics/dedup_calibration.json``). The candidate pairs come from an index
(``features.hamming_pairs``), not from comparing every pair.
Duplicate pairs are joined into clusters (connected components), so a chain of
re-encoded copies ends up in one cluster even if its ends differ more.

Which image a cluster keeps, deterministically: the one that carries the most
provenance (patient id, then tumour mask), then the highest resolution, then
the source listed first in the active source set, then the smallest
``image_id``. A cluster whose members carry different labels is a *label
conflict*: with ``conflicts: drop`` the whole cluster is dropped (no one can
say which label is right); with ``keep_majority`` the majority label's best
image is kept. ``tumor_unknown`` (Br35H "yes") agrees with any tumour class
but conflicts with ``no_tumor``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..config import UNKNOWN_TUMOUR, DedupConfig
from .fingerprints import Fingerprints, compute_fingerprints, confirmed_pairs


@dataclass(frozen=True)
class DedupResult:
    manifest: pd.DataFrame  # the merge manifest + cluster_id, cluster_size, kept, drop_reason
    pairs: pd.DataFrame  # confirmed duplicate pairs with their kind and distances
    report: dict


def duplicate_pairs(manifest: pd.DataFrame, fingerprints: Fingerprints, cfg: DedupConfig) -> pd.DataFrame:
    """Exact pairs (same pixel hash) and confirmed near pairs, as rows ``a, b, kind, hamming, correlation``.

    Exact duplicates are linked as a chain (each to the next with the same hash), which is enough to
    join them into one cluster; their count is therefore "links", i.e. copies beyond the first.
    """
    i, j, hamming, correlation = confirmed_pairs(fingerprints, cfg.max_hamming, cfg.min_correlation)
    near = pd.DataFrame({"a": i, "b": j, "hamming": hamming, "correlation": correlation})
    sha = manifest["sha256"].to_numpy()
    order = np.argsort(sha, kind="stable")
    same_as_next = sha[order][1:] == sha[order][:-1]
    exact = pd.DataFrame({"a": order[:-1][same_as_next], "b": order[1:][same_as_next]})
    exact = exact.assign(kind="exact", hamming=0, correlation=1.0)
    pairs = pd.concat([exact, near.assign(kind="near")], ignore_index=True)
    pairs[["a", "b"]] = np.sort(pairs[["a", "b"]].to_numpy(), axis=1)
    pairs = pairs.drop_duplicates(["a", "b"], keep="first")  # an exact pair is not counted again as near
    return pairs.sort_values(["a", "b"]).reset_index(drop=True)


def cluster_ids(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """Connected components of the duplicate graph; ids are renumbered by first member for stability."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs["a"].to_numpy(), pairs["b"].to_numpy())), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first_index, renumbered = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first_index))[renumbered]


def is_conflict(labels: set[str]) -> bool:
    """Whether a cluster's labels disagree (``tumor_unknown`` only disagrees with ``no_tumor``)."""
    definite = labels - {UNKNOWN_TUMOUR}
    return len(definite) > 1 or (UNKNOWN_TUMOUR in labels and "no_tumor" in labels)


def _keep_rank(manifest: pd.DataFrame, source_order: list[str]) -> pd.Series:
    """Sort key: lower is better (provenance, resolution, source priority, id)."""
    priority = {name: rank for rank, name in enumerate(source_order)}
    ranked = pd.DataFrame(
        {
            "no_patient": manifest["patient_id"].fillna("").astype(str).eq(""),
            "no_mask": manifest["mask_path"].fillna("").astype(str).eq(""),
            "pixels": -(manifest["width"] * manifest["height"]),
            "source": manifest["source"].map(priority).fillna(len(priority)),
            "image_id": manifest["image_id"],
        }
    )
    order = ranked.sort_values(list(ranked.columns), kind="stable").index
    rank = pd.Series(np.arange(len(order)), index=order)
    return rank.reindex(manifest.index)


def choose_kept(
    manifest: pd.DataFrame, source_order: list[str], conflicts: str
) -> tuple[pd.Series, pd.Series, list[dict]]:
    """Decide ``kept`` and ``drop_reason`` per row; also return one record per label conflict."""
    rank = _keep_rank(manifest, source_order)
    kept = pd.Series(False, index=manifest.index)
    reason = pd.Series("", index=manifest.index, dtype=object)
    conflict_records = []
    for cluster, members in manifest.groupby("cluster_id", sort=True):
        labels = set(members["label"])
        candidates = members
        if is_conflict(labels):
            conflict_records.append(
                {
                    "cluster_id": int(cluster),
                    "labels": dict(sorted(Counter(members["label"]).items())),
                    "image_ids": sorted(members["image_id"]),
                    "action": conflicts,
                }
            )
            if conflicts == "drop":
                reason[members.index] = "label conflict"
                continue
            counts = Counter(members["label"])
            top = max(counts.values())
            winners = sorted(label for label, count in counts.items() if count == top)
            if len(winners) > 1:
                reason[members.index] = "label conflict without majority"
                continue
            candidates = members[members["label"] == winners[0]]
            reason[members.index.difference(candidates.index)] = "label conflict: minority label"
        best = rank[candidates.index].idxmin()
        kept[best] = True
        reason[candidates.index.difference([best])] = "duplicate"
    return kept, reason, conflict_records


def _pair_table(manifest: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    a, b = manifest.iloc[pairs["a"]].reset_index(drop=True), manifest.iloc[pairs["b"]].reset_index(drop=True)
    return pd.DataFrame(
        {
            "image_a": a["image_id"],
            "image_b": b["image_id"],
            "kind": pairs["kind"].to_numpy(),
            "hamming": pairs["hamming"].to_numpy(),
            "correlation": pairs["correlation"].round(4).to_numpy(),
            "cross_source": (a["source"] != b["source"]).to_numpy(),
            "cross_label": (a["label"] != b["label"]).to_numpy(),
        }
    )


def build_report(manifest: pd.DataFrame, pair_table: pd.DataFrame, conflicts: list[dict], cfg: DedupConfig) -> dict:
    """The numbers a reviewer asks for: duplicates within/across sources and labels, conflicts, kept counts."""

    def count(kind: str, **where: bool) -> int:
        rows = pair_table[pair_table["kind"] == kind]
        for column, value in where.items():
            rows = rows[rows[column] == value]
        return int(len(rows))

    kept = manifest[manifest["kept"]]
    sizes = manifest.groupby("cluster_id").size()
    return {
        "images_in": int(len(manifest)),
        "images_kept": int(len(kept)),
        "images_dropped": int((~manifest["kept"]).sum()),
        "clusters": int(len(sizes)),
        "duplicate_clusters": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "pairs": {
            kind: {
                "total": count(kind),
                "within_source": count(kind, cross_source=False),
                "across_sources": count(kind, cross_source=True),
                "across_labels": count(kind, cross_label=True),
            }
            for kind in ("exact", "near")
        },
        "label_conflicts": {
            "clusters": len(conflicts),
            "images": int(sum(len(c["image_ids"]) for c in conflicts)),
            "action": cfg.conflicts,
        },
        "dropped_by_reason": {
            k: int(v) for k, v in sorted(Counter(manifest.loc[~manifest["kept"], "drop_reason"]).items())
        },
        "kept_per_class": {k: int(v) for k, v in sorted(Counter(kept["label"]).items())},
        "kept_per_source": {k: int(v) for k, v in sorted(Counter(kept["source"]).items())},
        "thresholds": {
            "frame_spread": cfg.frame_spread,
            "hash_size": cfg.hash_size,
            "max_hamming": cfg.max_hamming,
            "thumb_size": cfg.thumb_size,
            "min_correlation": cfg.min_correlation,
        },
    }


def deduplicate(
    manifest: pd.DataFrame, cfg: DedupConfig, source_order: list[str], workers: int | None = None
) -> tuple[DedupResult, Fingerprints]:
    """Cluster duplicates in a merge manifest and mark one image per cluster as kept."""
    manifest = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    fingerprints = compute_fingerprints(
        manifest["image_id"].tolist(),
        manifest["path"].tolist(),
        cfg.hash_size,
        cfg.thumb_size,
        workers,
        frame_spread=cfg.frame_spread,
    )
    pairs = duplicate_pairs(manifest, fingerprints, cfg)
    manifest = manifest.assign(cluster_id=cluster_ids(len(manifest), pairs))
    manifest["cluster_size"] = manifest.groupby("cluster_id")["image_id"].transform("size")
    kept, reason, conflicts = choose_kept(manifest, source_order, cfg.conflicts)
    manifest["kept"] = kept
    manifest["drop_reason"] = reason
    pair_table = _pair_table(manifest, pairs)
    report = build_report(manifest, pair_table, conflicts, cfg)
    report["conflicts"] = conflicts
    return DedupResult(manifest, pair_table, report), fingerprints


def write_outputs(result: DedupResult, fingerprints: Fingerprints, out_dir: Path, metrics_path: Path) -> None:
    """Write the deduplicated manifest, pairs, fingerprints, the human report and the DVC metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.manifest.to_csv(out_dir / "manifest.csv", index=False)
    result.pairs.to_csv(out_dir / "pairs.csv", index=False)
    fingerprints.save(out_dir / "fingerprints.npz")
    (out_dir / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(result.report))
    metrics = {key: value for key, value in result.report.items() if key != "conflicts"}
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    plot_largest_clusters(result.manifest, out_dir / "largest_clusters.png")


def render_markdown(report: dict) -> str:
    """A human-readable dedup report."""
    lines = [
        "# Dedup report",
        "",
        f"Images in: {report['images_in']}, kept: {report['images_kept']}, dropped: {report['images_dropped']} "
        f"({report['duplicate_clusters']} duplicate clusters, largest {report['largest_cluster']}).",
        "",
        "| pairs | total | within source | across sources | across labels |",
        "|---|---|---|---|---|",
    ]
    for kind, row in report["pairs"].items():
        lines.append(
            f"| {kind} | {row['total']} | {row['within_source']} | {row['across_sources']} | {row['across_labels']} |"
        )
    lines += [
        "",
        "Dropped by reason: " + (", ".join(f"{k} {v}" for k, v in report["dropped_by_reason"].items()) or "none"),
    ]
    lines += ["", "Kept per class: " + ", ".join(f"{k} {v}" for k, v in report["kept_per_class"].items())]
    lines += ["", "Kept per source: " + ", ".join(f"{k} {v}" for k, v in report["kept_per_source"].items())]
    lines += ["", f"Thresholds: {report['thresholds']}", "", f"## Label conflicts ({len(report['conflicts'])})", ""]
    for conflict in report["conflicts"]:
        lines.append(
            f"- cluster {conflict['cluster_id']}: {conflict['labels']} → {conflict['action']}: "
            f"{', '.join(conflict['image_ids'])}"
        )
    return "\n".join(lines) + "\n"


def plot_largest_clusters(manifest: pd.DataFrame, path: Path, clusters: int = 8, per_cluster: int = 6) -> None:
    """Save the largest clusters side by side (one row each) so a person can check them by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    sizes = manifest.groupby("cluster_id").size()
    largest = sizes[sizes > 1].sort_values(ascending=False, kind="stable").index[:clusters]
    rows = max(len(largest), 1)
    figure, axes = plt.subplots(rows, per_cluster, figsize=(per_cluster * 1.6, rows * 1.8), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for row, cluster in enumerate(largest):
        members = manifest[manifest["cluster_id"] == cluster].sort_values(["kept", "image_id"], ascending=[False, True])
        for column, member in enumerate(members.head(per_cluster).itertuples()):
            with Image.open(member.path) as image:
                axes[row, column].imshow(np.asarray(image.convert("L")), cmap="gray")
            mark = "KEPT " if member.kept else ""
            axes[row, column].set_title(f"{mark}{member.source}\n{member.label}", fontsize=6)
    if not len(largest):
        axes[0, 0].set_title("no duplicate clusters", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
