"""How much of the label can be read off cues that are not the tumour: a source and class probe.

Run from a project root whose split stage ran on real data (``build/split/split.csv``):

    python benchmarks/source_probe.py --out metrics/source_probe.json

For each kept image it computes cues that say where an image comes from rather than what it shows:

- ``size``: the stored width, height and aspect ratio;
- ``border``: mean and spread of the outer 8% frame, share of pure-black and pure-white pixels;
- ``framing``: where the head sits (margins of the bounding box of pixels above 10% of the maximum, its area);
- ``histogram``: the 32-bin grey-level histogram;
- ``corners``: bright pixels in the four corner patches (burnt-in text and annotations sit there).

A gradient-boosted classifier is fitted on the train split and scored on the test split (the
patient-level split: no patient or near-copy shared), once per cue group and once with all, for two
targets: the *source* of an image and its *class*. Chance is the majority share. A class probe far
above chance from these cues alone is the confound a CNN can learn instead of the tumour.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import balanced_accuracy_score

CUE_GROUPS = ("size", "border", "framing", "histogram", "corners")


def cues(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The cue groups of one grey image (values scaled so that images of any size compare)."""
    height, width = pixels.shape
    grey = pixels.astype(np.float32) / 255.0
    band = max(1, int(0.08 * min(height, width)))
    frame = np.concatenate([grey[:band].ravel(), grey[-band:].ravel(), grey[:, :band].ravel(), grey[:, -band:].ravel()])
    rows, cols = np.nonzero(grey > 0.1 * max(float(grey.max()), 1e-6))
    if len(rows):
        box = [rows.min() / height, 1 - (rows.max() + 1) / height, cols.min() / width, 1 - (cols.max() + 1) / width]
    else:
        box = [0.5, 0.5, 0.5, 0.5]
    corner = max(1, int(0.15 * min(height, width)))
    patches = [grey[:corner, :corner], grey[:corner, -corner:], grey[-corner:, :corner], grey[-corner:, -corner:]]
    return {
        "size": np.array([width, height, width / height], dtype=np.float32),
        "border": np.array([frame.mean(), frame.std(), (grey == 0).mean(), (grey >= 1).mean()], dtype=np.float32),
        "framing": np.array([*box, (1 - box[0] - box[1]) * (1 - box[2] - box[3])], dtype=np.float32),
        "histogram": np.histogram(grey, bins=32, range=(0, 1))[0].astype(np.float32) / grey.size,
        "corners": np.array([(p > 0.8).mean() for p in patches], dtype=np.float32),
    }


def probe(features: np.ndarray, target: np.ndarray, train: np.ndarray, seed: int) -> float:
    model = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
    model.fit(features[train], target[train])
    return round(float(balanced_accuracy_score(target[~train], model.predict(features[~train]))), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("build/split/split.csv"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    table = pd.read_csv(args.split, dtype=str, keep_default_na=False)
    table = table[table["split"].isin(["train", "test"])].reset_index(drop=True)
    per_image = []
    for path in table["path"]:
        with Image.open(path) as image:
            per_image.append(cues(np.asarray(image.convert("L"))))
    groups = {name: np.stack([c[name] for c in per_image]) for name in CUE_GROUPS}
    groups["all"] = np.concatenate([groups[name] for name in CUE_GROUPS], axis=1)
    train = (table["split"] == "train").to_numpy()
    results = {}
    for target in ("source", "label"):
        values = table[target].to_numpy()
        chance = round(float(pd.Series(values[~train]).value_counts(normalize=True).iloc[0]), 4)
        results[target] = {
            "classes": int(pd.Series(values).nunique()),
            "majority_share": chance,
            "balanced_accuracy": {name: probe(f, values, train, args.seed) for name, f in groups.items()},
        }
    print("| target | " + " | ".join(["all", *CUE_GROUPS]) + " | chance (balanced) |")
    print("|---" * (len(CUE_GROUPS) + 3) + "|")
    for target, r in results.items():
        row = " | ".join(str(r["balanced_accuracy"][name]) for name in ["all", *CUE_GROUPS])
        print(f"| {target} ({r['classes']}) | {row} | {1 / r['classes']:.3f} |")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "images": {"train": int(train.sum()), "test": int((~train).sum())},
                    "balanced_accuracy_on_test": results,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
