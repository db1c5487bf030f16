"""How often the out-of-distribution check refuses each kind of input, near-distribution ones included.

Scores, with a trained checkpoint and the evaluate stage's ``ood.npz``:
the generated near-distribution set (``brainmri.synthetic.near_ood.near_mri_images``:
head-CT phantoms, Shepp-Logan, abdomen MRI look-alikes), the real images
that pydicom and nibabel ship (``packaged_medical_images``: head and body CT,
body MRI, a bone scan, ultrasound, EPI brain MRI; needs the ``dev`` extra),
the plainly non-MRI set (``brainmri.synthetic.non_mri.non_mri_images``), and the real brain
MRI whose scores the evaluate and external stages already wrote
(``predictions.csv``: the test split, and each external set given). Besides
the fitted threshold it shows the refusal rates the threshold would give at
other quantiles of the val scores, the one knob of the check.

For the external sets it also says where the refusals fall: how many refused
images are blank (one grey level: not a brain MRI by any measure; needs the
set itself, ``--sets``), the refusal rate without them, and the patients
with the most refused slices.

    python benchmarks/ood_near.py --build build --external build/external/tcga_lgg_post_contrast/predictions.csv \
        --sets ../shared/datasets/tcga-lgg-post-contrast.zip
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from brainmri.core.imaging import BadImage, decode_image
from brainmri.core.inputs import INPUT_LIMITS, iter_inputs
from brainmri.core.preprocess import normalise_input
from brainmri.model.checkpoint import load_checkpoint
from brainmri.model.inference import check_features
from brainmri.model.ood import OODCheck
from brainmri.synthetic.near_ood import ACCEPTED_KINDS, near_mri_images, packaged_medical_images
from brainmri.synthetic.non_mri import non_mri_images

QUANTILES = (0.99, 0.995, 0.999, 1.0)


def near_scores(build: Path, seed: int) -> tuple[OODCheck, list[str], np.ndarray]:
    """Kinds and OOD scores of every generated, packaged and non-MRI image, with the build's model and check."""
    model, meta = load_checkpoint(build / "model" / "model.pt")
    check = OODCheck.load(build / "evaluate" / "ood.npz")
    samples = (
        near_mri_images(seed) + packaged_medical_images() + [(f"non_mri_{k}", n, i) for k, n, i in non_mri_images(seed)]
    )
    features = check_features(
        model, [normalise_input(image, meta.preprocess) for _, _, image in samples], meta.image_size, check.view
    )
    return check, [kind for kind, _, _ in samples], check.score(features)


def refusal_table(groups: dict[str, np.ndarray], thresholds: dict[str, float]) -> pd.DataFrame:
    """One row per group of scores: its size and the share above each threshold."""
    rows = []
    for name, scores in groups.items():
        row = {"inputs": name, "n": len(scores)}
        row.update(
            {label: round(float(np.mean(scores > t)), 4) if len(scores) else None for label, t in thresholds.items()}
        )
        rows.append(row)
    return pd.DataFrame(rows)


def decoded_images(sets: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """Every decodable image of ``sets`` (folders or zips), named as the external stage names it."""
    for name, data, _ in iter_inputs(sets):
        try:
            yield name, decode_image(data or b"", name, INPUT_LIMITS)
        except BadImage:
            continue


def blank_files(sets: list[Path]) -> set[str]:
    """Names of the images in ``sets`` that hold a single grey level."""
    return {name for name, pixels in decoded_images(sets) if pixels.min() == pixels.max()}


def where_refusals_fall(predictions: pd.DataFrame, threshold: float, blank: set[str], top: int = 5) -> dict:
    """Refused images of an external set: how many are blank, the rate without them, the patients with the most."""
    refused = predictions["ood_score"].to_numpy() > threshold
    is_blank = predictions["file"].isin(blank).to_numpy()
    result = {
        "n": len(predictions),
        "refused": int(refused.sum()),
        "blank": int(is_blank.sum()),
        "refused_blank": int((refused & is_blank).sum()),
        "refusal_rate_without_blank": round(float(refused[~is_blank].mean()), 4) if (~is_blank).any() else None,
    }
    if "patient" in predictions and predictions["patient"].astype(str).str.len().gt(0).any():
        per_patient = predictions.loc[refused & ~is_blank].groupby("patient").size().sort_values(ascending=False)
        result["patients_with_refusals"] = int(len(per_patient))
        result["most_refused_patients"] = {str(k): int(v) for k, v in per_patient.head(top).items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--build",
        type=Path,
        default=Path("build"),
        help="folder with model/model.pt and evaluate/{ood.npz,predictions.csv}",
    )
    parser.add_argument(
        "--external", type=Path, nargs="*", default=[], help="external sets' predictions.csv (real brain MRI)"
    )
    parser.add_argument(
        "--sets", type=Path, nargs="*", default=[], help="the external sets' folders or zips, to find blank images"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()

    check, kinds, scores = near_scores(args.build, args.seed)
    predictions = pd.read_csv(args.build / "evaluate" / "predictions.csv")
    val = predictions.loc[predictions["split"] == "val", "ood_score"].to_numpy()
    thresholds = {"fitted": check.threshold} | {
        f"q={q}": float(np.quantile(val, q, method="higher")) for q in QUANTILES
    }
    groups = {"brain MRI: test split": predictions.loc[predictions["split"] == "test", "ood_score"].to_numpy()}
    blank = blank_files(args.sets)
    breakdown = {}
    for path in args.external:
        external = pd.read_csv(path, keep_default_na=False)
        groups[f"brain MRI: {path.parent.name}"] = external["ood_score"].to_numpy()
        breakdown[path.parent.name] = where_refusals_fall(external, check.threshold, blank)
    kinds_array = np.asarray(kinds)
    for kind in dict.fromkeys(kinds):
        label = f"brain MRI: {kind}" if kind in ACCEPTED_KINDS else kind
        groups[label] = scores[kinds_array == kind]
    table = refusal_table(groups, thresholds)
    print("thresholds: " + ", ".join(f"{k} {v:.3f}" for k, v in thresholds.items()))
    print(table.to_markdown(index=False))
    for name, result in breakdown.items():
        print(f"{name} at the fitted threshold: {json.dumps(result)}")
    if args.out:
        payload = {"thresholds": thresholds, "rows": table.to_dict(orient="records"), "external": breakdown}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
