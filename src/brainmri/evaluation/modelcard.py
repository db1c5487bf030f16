"""The model card (Markdown), written by the evaluate stage from what the pipeline measured.

Every number in it comes from the checkpoint, the split table, the dedup and
split reports and the evaluate stage's own metrics, so the card cannot drift
from the model it describes. The confounding section is computed from the
split table, because in the public sources class and source go together (all
``no_tumor`` images of the combined Kaggle set come from Br35H, figshare has
tumours only) and a reader must see how strongly before trusting a number.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..model.checkpoint import CheckpointMeta

CONFOUNDED_SHARE = 0.8
"""A class drawn this much from one source (or a source this much from one class) is flagged as confounded."""

FIGURES = (
    ("confusion_matrix.png", "confusion matrices (test)"),
    ("roc.png", "ROC curves, one vs rest (test)"),
    ("reliability.png", "reliability diagram (test)"),
    ("training_curves.png", "loss and accuracy per epoch"),
    ("gradcam.png", "Grad-CAM overlays, correct and wrong, per class (test)"),
    ("ood_scores.png", "out-of-distribution scores of MRI and non-MRI images"),
)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(result: dict, key: str) -> str:
    interval = result.get(f"{key}_ci95")
    return f"{_pct(result[key])} [{_pct(interval[0])}, {_pct(interval[1])}]" if interval else _pct(result[key])


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _flatten(params: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        items += _flatten(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return items


def _model(meta: CheckpointMeta) -> list[str]:
    lines = [
        "## Model",
        "",
        f"- Architecture: `{meta.model_name}`; input: one grey channel resized to {meta.image_size}x{meta.image_size}, "
        "scaled to [0, 1] (`brainmri.preprocess`); output: softmax over "
        + ", ".join(f"`{c}`" for c in meta.classes)
        + ".",
        f"- Data version (hash of the split table it was trained on): `{meta.data_version}`.",
    ]
    if meta.preprocess.crop != "none" or meta.preprocess.intensity != "none":
        lines.insert(
            3,
            f"- Before resizing: crop `{meta.preprocess.crop}`, intensity `{meta.preprocess.intensity}` "
            "(`train.input`).",
        )
    scalars = {k: v for k, v in meta.extra.items() if isinstance(v, (int, float, str, bool))}
    if scalars:
        lines.append(
            "- Checkpoint chosen at: "
            + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items())
            + "."
        )
    lines += ["", "Training parameters (from the checkpoint):", ""]
    lines += _table(["param", "value"], [[f"`{k}`", f"`{v}`"] for k, v in _flatten(meta.params)])
    return lines


def _data(table: pd.DataFrame, reports: dict) -> list[str]:
    lines = ["## Data", ""]
    dedup = reports.get("dedup")
    if dedup:
        dropped = ", ".join(f"{n} {reason}" for reason, n in dedup.get("dropped_by_reason", {}).items()) or "none"
        pairs = dedup.get("pairs", {})
        lines += [
            f"- Images merged from the sources: {dedup['images_in']}; kept after near-duplicate removal: "
            f"{dedup['images_kept']} (dropped: {dropped}).",
            f"- Duplicate pairs found: {pairs.get('exact', {}).get('total', 'n/a')} exact, "
            f"{pairs.get('near', {}).get('total', 'n/a')} near (of which across sources: "
            f"{pairs.get('exact', {}).get('across_sources', 'n/a')} exact, "
            f"{pairs.get('near', {}).get('across_sources', 'n/a')} near); "
            f"label conflicts: {dedup.get('label_conflicts', {}).get('clusters', 'n/a')} cluster(s), "
            f"action `{dedup.get('label_conflicts', {}).get('action', 'n/a')}`.",
            "- Kept per source: " + ", ".join(f"{s} {n}" for s, n in dedup.get("kept_per_source", {}).items()) + ".",
            "- Kept per label: " + ", ".join(f"{c} {n}" for c, n in dedup.get("kept_per_class", {}).items()) + ".",
        ]
    split = reports.get("split")
    if split:
        excluded = ", ".join(f"{n} {label}" for label, n in split.get("excluded_not_a_class", {}).items()) or "none"
        leakage = split.get("leakage", {})
        lines += [
            f"- Split: {split['images']} images in {split.get('groups', 'n/a')} groups (patients and near-identical "
            f"neighbours stay in one split); not one of the classes, so not split: {excluded}.",
            f"- Leakage audit: {leakage.get('cross_split_duplicate_pairs', 'n/a')} duplicate pairs, "
            f"{leakage.get('same_picture_pairs_across_splits', 'n/a')} same-picture pairs, "
            f"{leakage.get('patients_in_several_splits', 'n/a')} patients and "
            f"{leakage.get('linker_pairs_across_splits', 'n/a')} linked same-patient pairs across splits.",
        ]
    if not reports:
        lines.append(
            "- (The dedup and split reports were not given to the evaluate stage; "
            "counts below are from the split table.)"
        )
    lines += ["", "Images per split and class:", ""]
    counts = pd.crosstab(table["split"], table["label"]).reindex(["train", "val", "test"]).fillna(0).astype(int)
    lines += _table(
        ["split", *counts.columns, "total"],
        [[s, *row, int(row.sum())] for s, row in zip(counts.index, counts.to_numpy(), strict=True)],
    )
    lines += ["Images per source and class (all splits):", ""]
    by_source = pd.crosstab(table["source"], table["label"])
    lines += _table(
        ["source", *by_source.columns],
        [[s, *row] for s, row in zip(by_source.index, by_source.to_numpy(), strict=True)],
    )
    return lines


def _results(metrics: dict, classes: list[str]) -> list[str]:
    lines = ["## Results", "", "95% intervals are percentile bootstrap over images.", ""]
    splits = [s for s in ("val", "test") if s in metrics]
    lines += _table(
        ["split", "n", "accuracy [95% CI]", "macro-F1 [95% CI]", "balanced accuracy", "ROC-AUC (macro)", "ECE"],
        [
            [
                s,
                metrics[s]["n"],
                _ci(metrics[s], "accuracy"),
                _ci(metrics[s], "macro_f1"),
                _pct(metrics[s]["balanced_accuracy"]),
                _num(metrics[s]["roc_auc_macro"]),
                _num(metrics[s]["ece"]),
            ]
            for s in splits
        ],
    )
    lines += _calibration(metrics.get("calibration"))
    if "test" in metrics:
        per_class = metrics["test"]["per_class"]
        lines += ["Per class (test):", ""]
        lines += _table(
            ["class", "support", "precision", "recall", "F1", "ROC-AUC"],
            [
                [
                    c,
                    per_class[c]["support"],
                    _pct(per_class[c]["precision"]),
                    _pct(per_class[c]["recall"]),
                    _pct(per_class[c]["f1"]),
                    _num(per_class[c]["roc_auc"]),
                ]
                for c in classes
            ],
        )
        lines += ["Tumour vs no tumour (any tumour class counts as tumour):", ""]
        lines += _table(
            ["split", "sensitivity", "specificity", "missed tumours"],
            [
                [s, _pct(d["sensitivity"]), _pct(d["specificity"]), d["missed_tumours"]]
                for s in splits
                if (d := metrics[s].get("tumour_detection"))
            ],
        )
        if unknown := [(s, d) for s in splits if (d := metrics[s].get("unknown_type_tumours"))]:
            lines += ["Tumours of unknown type (e.g. Br35H `yes`; detection only, their class is not known):", ""]
            lines += _table(
                ["split", "n", "called a tumour", "missed"],
                [[s, d["n"], _pct(d["sensitivity"]), d["missed"]] for s, d in unknown],
            )
        lines += [
            "Per source (test; macro-F1 over the classes present in that source): "
            "a source much worse than the others is a warning sign.",
            "",
        ]
        lines += _table(
            ["source", "n", "accuracy", "macro-F1"],
            [[s, r["n"], _pct(r["accuracy"]), _pct(r["macro_f1"])] for s, r in metrics["test"]["per_source"].items()],
        )
    return lines


def _calibration(calibration: dict | None) -> list[str]:
    if not calibration or "test" not in calibration:
        return []
    test = calibration["test"]
    return [
        f"Probabilities are temperature-scaled: logits divided by T = {calibration['temperature']:g}, fitted on val by "
        f"log-likelihood (`temperature.json` beside this card; `predict` and `export` apply it). On test, ECE "
        f"{_num(test['ece_uncalibrated'])} without it, {_num(test['ece_calibrated'])} with it; log loss "
        f"{_num(test['log_loss_uncalibrated'])} → {_num(test['log_loss_calibrated'])}. Accuracy and F1 do not change.",
        "",
    ]


def _localisation(methods: dict) -> list[str]:
    lines = ["## Explanations: where the model looks", ""]
    if not methods or not any(methods.values()):
        return lines + ["No test image has a known tumour mask or box, so localisation was not measured.", ""]
    lines += [
        "Saliency maps for the true class on test images with a tumour mask or box, by Grad-CAM, Grad-CAM++ and input "
        "gradients. *Pointing game*: the map's peak lies in the tumour (strictly; and within 15 pixels of the stored "
        "image). *Mass*: share of the map inside the tumour. *Chance*: the tumour's share of the image, what a map "
        "spread evenly would score on the strict game and the mass.",
        "",
    ]
    rows = [
        [
            method,
            c,
            r["n"],
            _pct(r["pointing_game"]),
            _pct(r["pointing_game_15px"]),
            _pct(r["mass_in_region"]),
            _pct(r["chance"]),
        ]
        for method, located in methods.items()
        for c, r in located.items()
    ]
    return lines + _table(["method", "class", "n", "pointing game", "within 15 px", "mass in tumour", "chance"], rows)


def _tumour_removal(removal: dict) -> list[str]:
    lines = ["## Tumour-removal test", ""]
    if removal["healed"] == 0:
        return lines + [f"No test tumour slice could be healed ({removal['tumour_slices']} tumour slices).", ""]
    return lines + [
        f"{removal['healed']} of the {removal['tumour_slices']} test tumour slices had their tumour box replaced by "
        "the mirrored other hemisphere (`brainmri.synthetic.contralateral`). The model calls "
        f"{_pct(removal['no_tumour_before'])} of them tumour-free as they are and "
        f"{_pct(removal['no_tumour_after'])} once the tumour is gone. A model that reads the tumour moves the second "
        "figure towards 100%; one that reads the look of the source leaves it near the first.",
        "",
    ]


def _ood(ood: dict) -> list[str]:
    test, non_mri = ood["test"], ood["non_mri"]
    lines = [
        "## Out-of-distribution check",
        "",
        '`predict` answers "not a brain MRI" when an image\'s out-of-distribution score, the Mahalanobis distance of '
        "its pooled features to the nearest class mean at every trunk block (standardised on the val images and "
        f"averaged), exceeds {_num(ood['threshold'], 2)} (the {ood['quantile']:g} quantile of the val images; "
        "fitted on the train images, saved as `ood.npz` beside this card).",
        "",
        f"- MRI wrongly rejected (test): {_pct(test['false_rejection_rate'])} "
        f"({test['false_rejections']} of {test['n']}); "
        "per source: " + ", ".join(f"{s} {_pct(r)}" for s, r in test["per_source"].items()) + ".",
        f"- Non-MRI images detected: {_pct(non_mri['detection_rate'])} of {non_mri['n']}; per kind: "
        + ", ".join(f"{k} {_pct(r['detection_rate'])} (n={r['n']})" for k, r in non_mri["per_kind"].items())
        + ".",
    ]
    if near := ood.get("near_distribution"):
        lines.append(
            f"- Other medical images (generated look-alikes) refused: {_pct(near['detection_rate'])} of {near['n']}; "
            "per kind: "
            + ", ".join(f"{k} {_pct(r['detection_rate'])} (n={r['n']})" for k, r in near["per_kind"].items())
            + ". What gets through is classified as if it were a brain MRI."
        )
    return lines + [""]


def _confounding(table: pd.DataFrame) -> list[str]:
    """Sentences naming every class drawn mostly from one source and every source that holds mostly one class."""
    counts = pd.crosstab(table["label"], table["source"])
    notes = []
    for label, row in counts.iterrows():
        top = row.idxmax()
        if row[top] / row.sum() >= CONFOUNDED_SHARE and len(counts.columns) > 1:
            notes.append(f"{_pct(row[top] / row.sum())} of `{label}` images come from `{top}`")
    for source, column in counts.items():
        top = column.idxmax()
        if column[top] / column.sum() >= CONFOUNDED_SHARE and len(counts.index) > 1:
            notes.append(f"{_pct(column[top] / column.sum())} of `{source}` images are `{top}`")
        elif missing := [label for label, n in column.items() if n == 0]:
            notes.append(f"`{source}` has no " + " or ".join(f"`{label}`" for label in missing) + " images")
    if not notes:
        return ["- No class is drawn mostly from one source in this split table; still check per-source results."]
    return [
        "- **Source and class are confounded**: " + "; ".join(notes) + ". The model can score by recognising the "
        "source (scanner, resolution, JPEG re-encoding) instead of the tumour; per-source results and the Grad-CAM "
        "localisation above are the checks against that."
    ]


def _limitations(table: pd.DataFrame) -> list[str]:
    return [
        "## Limitations",
        "",
        *_confounding(table),
        "- One 2-D slice at a time, resized to a square; no 3-D context, "
        "no sequence information beyond what the sources hold.",
        "- Labels are the sources' folder labels, not re-read by radiologists; public sets carry label noise.",
        "- Patient identity is known only for figshare; elsewhere near-duplicate grouping is the only guard against "
        "one patient's slices landing in both train and test.",
        "- The out-of-distribution check only catches images whose features lie far from the training MRI; "
        "another MRI sequence, a CT slice or an unusual scanner may pass it and still be misclassified.",
        "- Grad-CAM is a coarse, qualitative explanation (one map per last feature layer), "
        "not evidence of correctness.",
        "",
    ]


def build_model_card(
    *, meta: CheckpointMeta, table: pd.DataFrame, metrics: dict, reports: dict, figures: list[str]
) -> str:
    """The card's Markdown text; ``figures`` are the PNG file names present beside it."""
    lines = [
        f"# Model card: brain-MRI tumour classifier (`{meta.model_name}`)",
        "",
        "Written by the evaluate stage (`brainmri evaluate`) from the checkpoint, the split and the measured metrics; "
        "rerun the stage instead of editing it.",
        "",
        "## Intended use",
        "",
        "Research and teaching: comparing models and data curation on public brain-MRI tumour datasets. "
        "**Not for diagnosis**, triage or any clinical decision; it is not a medical device and was not validated "
        "on clinical data.",
        "",
    ]
    lines += _model(meta)
    lines += _data(table, reports)
    lines += _results(metrics, list(meta.classes))
    lines += _localisation(metrics.get("localisation_methods", {}))
    if "ood" in metrics:
        lines += _ood(metrics["ood"])
    if "tumour_removal" in metrics:
        lines += _tumour_removal(metrics["tumour_removal"])
    lines += _limitations(table)
    if figures:
        labels = dict(FIGURES)
        lines += ["## Figures", ""] + [f"- [{labels[name]}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def write_model_card(
    path: Path, *, meta: CheckpointMeta, table: pd.DataFrame, metrics: dict, reports: dict, out_dir: Path
) -> None:
    figures = [name for name, _ in FIGURES if (out_dir / name).exists()]
    path.write_text(build_model_card(meta=meta, table=table, metrics=metrics, reports=reports, figures=figures))
