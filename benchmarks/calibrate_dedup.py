"""Calibrate the duplicate decision on real images: precision/recall over a threshold grid, the chosen
thresholds, and (with ``--archives``) duplicate counts within and across the real archives.

    python benchmarks/calibrate_dedup.py --mirror ../shared/datasets --archives

The calibration set and the sweep are described in ``benchmarks/dedup_threshold_study.py``. The thresholds are chosen
on one set (figshare files of even blocks of 100 numbers, Kaggle originals drawn with ``--seed``) and
then measured, unchanged, on a held-out set (odd blocks, i.e. other patients, and other Kaggle
originals): the held-out numbers are the ones to quote. Images are read from the
zips in ``--mirror`` and never written anywhere. The chosen row, its breakdown by transform family and
negative kind, the hardest negatives and weakest positives (by name, to check by eye) and the best row
of every setting go to ``--out`` (cited by ``params.yaml`` and the datasheet).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from brainmri.config import DedupConfig
from dedup_threshold_study import (
    FAMILIES,
    Setting,
    archive_duplicates,
    breakdown,
    build_pairs,
    choose,
    fingerprint_refs,
    frame_spread,
    index_radius_limit,
    pair_scores,
    sweep,
)

ARCHIVES = {
    "figshare_jpg": "figshare-cheng2017-jpg.zip",
    "kaggle_combined": "kaggle-brain-tumor-mri-dataset.zip",
    "br35h_no": "br35h-no-tumor-jpg.zip",
    "br35h_yes": "br35h-yes-bbox.zip",
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _name(ref) -> str:
    archive = Path(ref.archive).name
    return f"{archive}:{ref.member}" + (f" [{ref.family} #{ref.seed}]" if ref.family else "")


def _setting_rows(frame: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    return frame[
        (frame["frame"] == row["frame"])
        & (frame["hash_size"] == row["hash_size"])
        & (frame["thumb_size"] == row["thumb_size"])
    ]


def _examples(scores: pd.DataFrame, row: pd.Series, count: int = 10) -> dict:
    """The highest-correlation negatives and the positives the decision misses, by name."""
    called = (scores["hamming"] <= row["max_hamming"]) & (scores["correlation"] >= row["min_correlation"])

    def listed(rows: pd.DataFrame) -> list[dict]:
        return [
            {
                "a": _name(r.a),
                "b": _name(r.b),
                "kind": r.kind,
                "hamming": int(r.hamming),
                "correlation": round(float(r.correlation), 4),
            }
            for r in rows.itertuples()
        ]

    negatives = scores[~scores["duplicate"]].sort_values("correlation", ascending=False).head(count)
    missed = scores[scores["duplicate"] & ~called].sort_values("correlation").head(count)
    return {"hardest_negatives": listed(negatives), "missed_positives": listed(missed)}


def _measured(table_row: pd.Series) -> dict:
    return {
        "precision": round(float(table_row["precision"]), 4),
        "recall": round(float(table_row["recall"]), 4),
        "true_positives": int(table_row["tp"]),
        "false_positives": int(table_row["fp"]),
        "positives": int(table_row["positives"]),
        "negatives": int(table_row["negatives"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--figshare", type=int, default=300, help="figshare originals (each gets 7 copies)")
    parser.add_argument("--kaggle", type=int, default=300, help="Kaggle originals (each gets 7 copies)")
    parser.add_argument("--random-pairs", type=int, default=1000, help="random negatives per archive")
    parser.add_argument("--seed", type=int, default=0, help="the calibration set's; the held-out set uses seed + 1")
    parser.add_argument(
        "--spreads", default="none,0.6,0.7,0.8,1.0", help="core frame spreads to try; none: the whole image"
    )
    parser.add_argument("--hash-sizes", default="8,16")
    parser.add_argument("--thumb-sizes", default="16,24,32,64")
    parser.add_argument("--min-precision", type=float, default=0.99)
    parser.add_argument("--min-recall", type=float, default=0.98)
    parser.add_argument(
        "--compare",
        default="none,16,40,32,0.97",
        help="another rule to report on the calibration set: spread,hash_size,max_hamming,thumb_size,min_correlation "
        "(default: the params before calibration, whole image)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--archives", action="store_true", help="also count duplicates in the four real archives")
    parser.add_argument("--out", type=Path, default=Path("metrics/dedup_calibration.json"))
    args = parser.parse_args()
    figshare, kaggle = args.mirror / ARCHIVES["figshare_jpg"], args.mirror / ARCHIVES["kaggle_combined"]
    sizes = dict(n_figshare=args.figshare, n_kaggle=args.kaggle, random_pairs=args.random_pairs, workers=args.workers)

    # 1. the calibration set: every setting, the whole grid; choose
    started = time.perf_counter()
    spreads = tuple(None if x == "none" else float(x) for x in args.spreads.split(","))
    pairs = build_pairs(figshare, kaggle, seed=args.seed, spreads=spreads, half=0, **sizes)
    settings = [Setting(f, h, t) for f in spreads for h in _ints(args.hash_sizes) for t in _ints(args.thumb_sizes)]
    scores = pair_scores(pairs, fingerprint_refs(list(pairs["a"]) + list(pairs["b"]), settings, args.workers), settings)
    hammings = sorted({h for s in settings for h in range(0, index_radius_limit(s.hash_size) * 2 + 1, 2)})
    table = sweep(scores, hammings, np.round(np.arange(0.70, 0.9951, 0.005), 3))
    chosen = choose(table, args.min_precision, args.min_recall)
    composition = _setting_rows(scores, chosen)
    print(
        f"calibration set (seed {args.seed}, figshare even blocks): {len(composition)} pairs, "
        f"built and fingerprinted for {len(settings)} settings in {time.perf_counter() - started:.0f} s"
    )
    print(composition.groupby(["duplicate", "kind"]).size().rename("pairs").reset_index().to_string(index=False), "\n")

    best = []
    for _, group in table.groupby(["frame", "hash_size", "thumb_size"], sort=True):
        row = choose(group, args.min_precision, args.min_recall)
        precise = group[
            (group["precision"] >= args.min_precision)
            & (group["max_hamming"] <= index_radius_limit(int(row["hash_size"])))
        ]
        best.append(
            {
                "frame": row["frame"],
                "hash_size": int(row["hash_size"]),
                "thumb_size": int(row["thumb_size"]),
                "max_hamming": int(row["max_hamming"]),
                "min_correlation": float(row["min_correlation"]),
                "precision": round(float(row["precision"]), 4),
                "recall": round(float(row["recall"]), 4),
                "margin": round(float(row["margin"]), 4),
                "best_recall_at_min_precision": round(float(precise["recall"].max()), 4) if len(precise) else 0.0,
            }
        )
    best = pd.DataFrame(best)
    print(
        f"best thresholds per setting: widest margin over precision >= {args.min_precision} "
        f"and recall >= {args.min_recall}, "
        "Hamming radius at most hash bits / 8 (what the index searches fast):"
    )
    print(_markdown(best), "\n")

    grid = _setting_rows(table, chosen)
    grid = grid[grid["min_correlation"].isin(np.round(np.arange(0.75, 0.9951, 0.025), 3)) & (grid["max_hamming"] <= 16)]
    view = grid.assign(pr=grid["precision"].map("{:.3f}".format) + "/" + grid["recall"].map("{:.3f}".format))
    print(
        f"precision/recall of {chosen['frame']}, hash {chosen['hash_size']}, thumb {chosen['thumb_size']} "
        "(rows: max_hamming, columns: min_correlation):"
    )
    print(view.pivot(index="max_hamming", columns="min_correlation", values="pr").to_string(), "\n")
    chosen_params = {
        "frame_spread": frame_spread(chosen["frame"]),
        "hash_size": int(chosen["hash_size"]),
        "max_hamming": int(chosen["max_hamming"]),
        "thumb_size": int(chosen["thumb_size"]),
        "min_correlation": float(chosen["min_correlation"]),
    }
    print(f"CHOSEN {chosen_params}: calibration set {_measured(chosen)}")
    spread, hash_size, radius, thumb_size, correlation = args.compare.split(",")
    other = Setting(None if spread == "none" else float(spread), int(hash_size), int(thumb_size))
    compared = table[
        (table["frame"] == other.frame)
        & (table["hash_size"] == other.hash_size)
        & (table["thumb_size"] == other.thumb_size)
        & (table["max_hamming"] == int(radius))
        & np.isclose(table["min_correlation"], float(correlation))
    ]
    compared = _measured(compared.iloc[0]) if len(compared) else "not in the grid"
    print(
        f"COMPARED {args.compare} (frame_spread,hash_size,max_hamming,thumb_size,min_correlation): "
        f"calibration set {compared}"
    )
    calibration_detail = breakdown(scores, chosen)

    # 2. a held-out set: other patients and originals, look-alikes picked for the chosen setting; thresholds fixed
    setting = Setting(chosen_params["frame_spread"], chosen_params["hash_size"], chosen_params["thumb_size"])
    held_pairs = build_pairs(
        figshare,
        kaggle,
        seed=args.seed + 1,
        spreads=(setting.spread,),
        half=1,
        exclude=frozenset(r.member for r in pairs["a"]),
        **sizes,
    )
    held_scores = pair_scores(
        held_pairs, fingerprint_refs(list(held_pairs["a"]) + list(held_pairs["b"]), [setting], args.workers), [setting]
    )
    held = sweep(held_scores, [chosen["max_hamming"]], [chosen["min_correlation"]]).iloc[0]
    held_detail = breakdown(held_scores, held)
    print(f"HELD-OUT (seed {args.seed + 1}, figshare odd blocks, other Kaggle originals): {_measured(held)}")
    print(json.dumps(held_detail, indent=1))
    examples = _examples(held_scores, held)
    print("hardest negatives (held-out):", *(f"  {e}" for e in examples["hardest_negatives"]), sep="\n")
    print("missed positives (held-out):", *(f"  {e}" for e in examples["missed_positives"]), sep="\n")

    result = {
        "command": "python benchmarks/calibrate_dedup.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("archives", "out", "workers")
        ),
        "targets": {"precision": args.min_precision, "recall": args.min_recall},
        "chosen": chosen_params,
        "compared": {"rule": args.compare, "calibration_set": compared},
        "held_out": {
            "seed": args.seed + 1,
            **_measured(held),
            **held_detail,
            "pairs_by_kind": held_scores.groupby("kind").size().to_dict(),
        },
        "calibration": {
            "seed": args.seed,
            **_measured(chosen),
            **calibration_detail,
            "pairs_by_kind": composition.groupby("kind").size().to_dict(),
            "originals": {"figshare_jpg": args.figshare, "kaggle_combined": args.kaggle},
            "families": list(FAMILIES) + ["combo (second copy)"],
            "best_per_setting": best.to_dict(orient="records"),
        },
        **examples,
    }
    if args.archives:
        started = time.perf_counter()
        counts = archive_duplicates(
            {name: args.mirror / file for name, file in ARCHIVES.items()}, DedupConfig(**chosen_params), args.workers
        )
        print(f"\nduplicates in the real archives at the chosen thresholds ({time.perf_counter() - started:.0f} s):")
        print(json.dumps(counts, indent=1))
        result["real_archives"] = counts
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
