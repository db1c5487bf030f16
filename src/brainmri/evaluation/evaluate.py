"""Evaluate stage: metrics on val and test, per source, explanations, the out-of-distribution check, the model card.

Writes ``metrics/metrics.json`` (DVC metrics), plot data under
``metrics/evaluate/`` (declared as DVC plots in ``dvc.yaml``) and, under
``evaluate.out_dir``: PNG figures, per-image predictions, Grad-CAM overlays
(``gradcam/<class>/``), the fitted out-of-distribution check (``ood.npz``)
and temperature (``temperature.json``), which ``predict`` uses, and
``MODEL_CARD.md``.

Every probability reported (metrics, plots, predictions) is the calibrated
one, ``softmax(logits / T)`` with ``T`` fitted on val, because that is what
``predict`` and the exports give a user; ``metrics.json`` keeps the
uncalibrated ECE and log loss beside under ``calibration``.

Every output is a function of the inputs and the seed (no timings, no
timestamps), so the reproducibility check can compare bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn import metrics as skm

from ..config import UNKNOWN_TUMOUR, UNKNOWN_TUMOUR_INDEX, EvaluateConfig, InputConfig
from ..core.hashing import file_digest
from ..core.imaging import read_grey_png
from ..core.preprocess import NO_INPUT, crop_square, input_box, normalise_input, prepare_grey
from ..model.checkpoint import load_checkpoint
from ..model.explain import (
    DEFAULT_SALIENCY,
    SALIENCY_METHODS,
    gradcam_images,
    localisation,
    region_mask,
    save_overlay,
    summarise_localisation,
    tolerance_in_map,
)
from ..model.inference import check_features, logits_and_features
from ..model.ood import NOT_MRI, OODCheck, detection_summary, fit_ood
from ..model.temperature import Temperature, fit_temperature, negative_log_likelihood, softmax
from ..synthetic.near_ood import near_mri_images
from ..synthetic.non_mri import non_mri_images
from .metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    reliability_table,
    tumour_detection,
)
from .tumour_removal import tumour_removal

PLOT_SPLIT = "test"


def load_resized(paths, image_size: int, spec: InputConfig = NO_INPUT) -> list[np.ndarray]:
    """Decode the pipeline's PNGs and prepare them at once (``preprocess.prepare_grey``: the checkpoint's crop and
    intensity settings, then the resize), so a large split never sits in memory at full size.

    Decoding runs in threads (Pillow releases the GIL); the order of the result is the order of ``paths``.
    """
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda path: prepare_grey(read_grey_png(path), image_size, spec), paths))


def _split_metrics(
    rows: pd.DataFrame, y: np.ndarray, proba: np.ndarray, classes: list[str], cfg: EvaluateConfig, seed: int
) -> dict:
    predicted = proba.argmax(axis=1)
    result = classification_metrics(y, proba, classes)
    result.update(bootstrap_ci(y, predicted, len(classes), cfg.bootstrap, seed))
    if "no_tumor" in classes:
        result["tumour_detection"] = tumour_detection(y, predicted, classes.index("no_tumor"))
    result["per_source"] = {
        source: {
            "n": int(members.sum()),
            "accuracy": float((predicted[members] == y[members]).mean()),
            "macro_f1": present_macro_f1(y[members], predicted[members]),
        }
        for source in sorted(rows["source"].unique())
        for members in [rows["source"].to_numpy() == source]
    }
    return result


def _unknown_type_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The split's rows of no class: tumours of unknown type (``split.unknown_tumours``); any other label is an
    error naming it."""
    other = sorted(set(rows["label"]) - {UNKNOWN_TUMOUR})
    if other:
        raise ValueError(f"split table has labels {other} that are neither a class of the model nor {UNKNOWN_TUMOUR}")
    return rows


def _with_unknown_type(features: list[np.ndarray], unknown_features: list[np.ndarray] | None) -> list[np.ndarray]:
    """Each block's features of the class rows followed by those of the unknown-type rows (None: there are none)."""
    if unknown_features is None:
        return features
    return [np.concatenate([a, b]) for a, b in zip(features, unknown_features, strict=True)]


def unknown_type_detection(rows: pd.DataFrame, proba: np.ndarray, classes: list[str], refused: np.ndarray) -> dict:
    """Tumours of unknown type: how many the model calls a tumour (any class but ``no_tumor``), overall and per
    source, which classes it gives them, and how many the OOD check refuses. No class accuracy: their class is not
    known."""
    predicted = np.array(classes)[proba.argmax(axis=1)]
    called = predicted != "no_tumor"
    return {
        "n": int(len(rows)),
        "sensitivity": round(float(called.mean()), 4),
        "missed": int((~called).sum()),
        "called": {name: int((predicted == name).sum()) for name in classes},
        "ood_rejected": int(np.sum(refused)),
        "per_source": {
            source: round(float(called[rows["source"].to_numpy() == source].mean()), 4)
            for source in sorted(rows["source"].unique())
        },
    }


def present_macro_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    """Macro-F1 over the classes the source holds (its true labels).

    A source without some class (figshare has no ``no_tumor``) would
    otherwise be averaged with an F1 of 0 for it, as soon as one of its
    images is predicted as that class: one wrong ``no_tumor`` among 455
    figshare images read as a macro-F1 of 0.74 on the real mirror. The error
    still counts, as a lower recall of the image's true class.
    """
    present = np.unique(y).tolist()
    return float(skm.f1_score(y, predicted, labels=present, average="macro", zero_division=0))


def calibration_summary(logits: dict[str, np.ndarray], y: dict[str, np.ndarray], temperature: float) -> dict:
    """The fitted temperature, and per split the ECE and log loss without it (``T = 1``) and with it.

    Val is where the temperature was fitted, so only the test numbers say
    how much calibration a new image gains.
    """
    result: dict = {"temperature": round(temperature, 4), "fitted_on": "val"}
    for split, split_logits in logits.items():
        if len(y[split]) == 0:
            continue
        result[split] = {
            f"{name}_{label}": round(value, 4)
            for label, t in (("uncalibrated", 1.0), ("calibrated", temperature))
            for name, value in (
                ("ece", expected_calibration_error(y[split], softmax(split_logits, t))),
                ("log_loss", negative_log_likelihood(split_logits, y[split], t)),
            )
        }
    return result


def _write_plot_data(plots_dir: Path, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> None:
    """Confusion rows, one ROC and one PR curve file per class, and the reliability table (DVC plots)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    predicted = proba.argmax(axis=1)
    confusion = [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(y, predicted, strict=True)]
    (plots_dir / "confusion.json").write_text(json.dumps(confusion, indent=0) + "\n")
    for k, name in enumerate(classes):
        positives = y == k
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positives, proba[:, k])
        pd.DataFrame({"fpr": fpr.round(5), "tpr": tpr.round(5)}).to_csv(plots_dir / f"roc_{name}.csv", index=False)
        precision, recall, _ = skm.precision_recall_curve(positives, proba[:, k])
        pd.DataFrame({"recall": recall.round(5), "precision": precision.round(5)}).to_csv(
            plots_dir / f"pr_{name}.csv", index=False
        )
    pd.DataFrame(reliability_table(y, proba)).to_csv(plots_dir / "reliability.csv", index=False)


def gradcam_sample(y: np.ndarray, predicted: np.ndarray, n_classes: int, per_class: int, seed: int) -> list[int]:
    """Row indices: up to ``per_class`` correctly and up to ``per_class`` wrongly predicted images of each true class.

    Drawn with the seed, so the same images are explained on every run and a
    reviewer sees failures next to successes instead of only the easy cases.
    """
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in range(n_classes):
        for correct in (True, False):
            members = np.flatnonzero((y == k) & ((predicted == y) == correct))
            if per_class and len(members):
                chosen.extend(int(i) for i in np.sort(rng.choice(members, min(per_class, len(members)), replace=False)))
    return chosen


def _regions(rows: pd.DataFrame, size: int, spec: InputConfig = NO_INPUT) -> list[np.ndarray | None]:
    columns = {
        c: rows[c].fillna("").astype(str) if c in rows else pd.Series([""] * len(rows)) for c in ("mask_path", "box")
    }
    if spec.crop == "none":
        return [region_mask(size, mask, box) for mask, box in zip(columns["mask_path"], columns["box"], strict=True)]
    return [
        _cropped_region(path, mask, box, size, spec) if mask or box else None
        for path, mask, box in zip(rows["path"], columns["mask_path"], columns["box"], strict=True)
    ]


def _cropped_region(path: str, mask: str, box: str, size: int, spec: InputConfig) -> np.ndarray | None:
    """The tumour region in the model's view of an image that ``crop: head`` cut: drawn at the image's own size, then
    cropped like the image, then resized (nearest) to ``size``."""
    pixels = read_grey_png(path)
    region = region_mask(pixels.shape, mask, box)
    square = input_box(pixels, spec)
    if region is None or square is None:
        return region_mask(size, mask, box) if square is None else None
    cropped = Image.fromarray(crop_square(region.astype(np.uint8) * 255, square)).resize(
        (size, size), Image.Resampling.NEAREST
    )
    view = np.asarray(cropped) > 127
    return view if view.any() else None


def _stored_side(path: str) -> int:
    with Image.open(path) as image:
        return max(image.size)


def _explain(
    model,
    meta,
    rows: pd.DataFrame,
    images: list[np.ndarray],
    y: np.ndarray,
    proba: np.ndarray,
    cfg: EvaluateConfig,
    seed: int,
) -> tuple[dict, list[tuple[Path, str]]]:
    """Localisation scores of every saliency method on every test image with a known tumour region, and the
    seeded overlay sample (default method).

    Localisation explains the *true* class (does the evidence for the right
    answer sit on the tumour?); overlays explain the *predicted* class (what
    made the model say what it said). The pointing game's 15-pixel tolerance
    is in pixels of the stored image (with ``crop: head`` the view is
    smaller than the image, so the tolerance in the view is a little
    stricter than 15 of its pixels).
    """
    classes = list(meta.classes)
    predicted = proba.argmax(axis=1)
    regions = _regions(rows, meta.image_size, meta.preprocess)
    located = [i for i, region in enumerate(regions) if region is not None]
    tolerances = [tolerance_in_map(_stored_side(rows["path"].iloc[i]), meta.image_size) for i in located]
    by_method = {}
    for method in SALIENCY_METHODS:
        maps, _ = gradcam_images(
            model, [images[i] for i in located], meta.image_size, targets=[int(y[i]) for i in located], method=method
        )
        scores = [
            {"label": classes[y[i]], **localisation(m, regions[i], t)}
            for i, m, t in zip(located, maps, tolerances, strict=True)
        ]
        by_method[method] = summarise_localisation(scores, classes)

    gradcam_dir = cfg.out_dir / "gradcam"
    shutil.rmtree(gradcam_dir, ignore_errors=True)  # no overlays left over from a run with another sample
    sample = gradcam_sample(y, predicted, len(classes), cfg.gradcam_per_class, seed)
    originals = [normalise_input(read_grey_png(rows["path"].iloc[i]), meta.preprocess) for i in sample]
    cams, _ = gradcam_images(model, originals, meta.image_size, targets=[int(predicted[i]) for i in sample])
    panels = []
    for i, original, cam in zip(sample, originals, cams, strict=True):
        verdict = "correct" if predicted[i] == y[i] else "wrong"
        image_id = rows["image_id"].iloc[i]
        path = gradcam_dir / classes[y[i]] / f"{verdict}_{image_id}.png"
        save_overlay(path, original, cam, regions[i])
        title = f"{classes[y[i]]} → {classes[predicted[i]]} ({proba[i, predicted[i]]:.2f}), {verdict}\n{image_id}"
        panels.append((path, title))
    return by_method, panels


def _ood(
    check: OODCheck,
    features: dict[str, list[np.ndarray]],
    test_rows: pd.DataFrame,
    non_mri: tuple[list[str], list[np.ndarray]],
    near: tuple[list[str], list[np.ndarray]],
) -> tuple[dict, dict[str, np.ndarray]]:
    """False rejections of MRI (val, test, test per source), detection of non-MRI and of near-distribution inputs
    (``brainmri.synthetic.near_ood``: CT-like, other body parts); the scores for the figure."""
    scores = {split: check.score(f) for split, f in features.items()}
    kinds, non_mri_features = non_mri
    scores["non-MRI"] = check.score(non_mri_features)
    near_kinds, near_features = near
    test_rejected = check.rejects(scores["test"])
    sources = test_rows["source"].to_numpy()
    result = {
        "quantile": check.quantile,
        "threshold": round(check.threshold, 4),
        "val_rejection_rate": round(float(check.rejects(scores["val"]).mean()), 4),
        "test": {
            "n": int(len(test_rejected)),
            "false_rejection_rate": round(float(test_rejected.mean()), 4) if len(test_rejected) else None,
            "false_rejections": int(test_rejected.sum()),
            "per_source": {s: round(float(test_rejected[sources == s].mean()), 4) for s in sorted(set(sources))},
        },
        "non_mri": detection_summary(kinds, check.rejects(scores["non-MRI"])),
        "near_distribution": detection_summary(near_kinds, check.rejects(check.score(near_features))),
    }
    return result, {"val MRI": scores["val"], "test MRI": scores["test"], "non-MRI": scores["non-MRI"]}


def evaluate_model(
    table: pd.DataFrame,
    checkpoint_path: Path,
    cfg: EvaluateConfig,
    *,
    seed: int,
    metrics_dir: Path,
    dedup_report: Path | None = None,
    split_report: Path | None = None,
) -> dict:
    """Evaluate a checkpoint on the val and test rows of a split table; write metrics, plot data, figures,
    Grad-CAM overlays, the out-of-distribution check and the model card.

    The train rows are read only to fit the out-of-distribution check. Rows of tumours of unknown type
    (``split.unknown_tumours``) take no part in class metrics or calibration; their val and test
    rows are scored for detection alone (``unknown_type_tumours``) and listed in the predictions. The OOD check is
    fitted on them too, as a group of their own.
    ``dedup_report`` and ``split_report`` (the stages' ``report.json``) add
    the data's history to the model card when given. External sets
    (``cfg.external``) are evaluated by their own stages (``brainmri.evaluation.external``).
    """
    from .figures import gradcam_figure, ood_figure, save_figures
    from .modelcard import write_model_card

    model, meta = load_checkpoint(checkpoint_path)
    classes = list(meta.classes)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    classed = table["label"].isin(classes)
    unknown_type = _unknown_type_rows(table[~classed])
    rows = {
        split: table[classed & (table["split"] == split)].reset_index(drop=True) for split in ("train", "val", "test")
    }
    images, logits, features = {}, {}, {}
    for split, members in rows.items():
        images[split] = load_resized(members["path"], meta.image_size, meta.preprocess)
        logits[split], features[split] = logits_and_features(model, images[split], meta.image_size)
    y = {split: members["label"].map(classes.index).to_numpy() for split, members in rows.items()}
    unknown = {split: unknown_type[unknown_type["split"] == split].reset_index(drop=True) for split in rows}
    unknown_images, unknown_logits, unknown_features = {}, {}, {}
    for split, members in unknown.items():
        if len(members):
            unknown_images[split] = load_resized(members["path"], meta.image_size, meta.preprocess)
            unknown_logits[split], unknown_features[split] = logits_and_features(
                model, unknown_images[split], meta.image_size
            )
    # What the out-of-distribution check scores: the same pass (ood_view: as_is) or one over stretched copies.
    seen = {s: check_features(model, images[s], meta.image_size, cfg.ood_view, features[s]) for s in rows}
    unknown_seen = {
        s: check_features(model, unknown_images[s], meta.image_size, cfg.ood_view, unknown_features[s])
        for s in unknown_images
    }

    temperature = fit_temperature(logits["val"], y["val"]) if cfg.temperature_scaling and len(y["val"]) else 1.0
    Temperature(temperature, file_digest(checkpoint_path)).save(cfg.temperature_file)
    proba = {split: softmax(logits[split], temperature) for split in ("val", "test")}

    # Unknown-type tumours are training MRI: a Gaussian group of their own (left out, the check refused 17 of
    # Br35H's 60 test tumour pictures as not MRI on the real mirror).
    check = fit_ood(
        _with_unknown_type(seen["train"], unknown_seen.get("train")),
        np.concatenate([y["train"], np.full(len(unknown["train"]), UNKNOWN_TUMOUR_INDEX)]),
        _with_unknown_type(seen["val"], unknown_seen.get("val")),
        cfg.ood_quantile,
        file_digest(checkpoint_path),
        cfg.ood_view,
    )
    check.save(cfg.ood_file)
    probes = {}
    for name, samples in (("non_mri", non_mri_images(seed)), ("near", near_mri_images(seed))):
        probe_features = check_features(
            model, [normalise_input(image, meta.preprocess) for _, _, image in samples], meta.image_size, check.view
        )
        probes[name] = ([k for k, _, _ in samples], probe_features)
    ood, ood_scores = _ood(
        check, {s: seen[s] for s in ("val", "test")}, rows["test"], probes["non_mri"], probes["near"]
    )

    results, predictions = {}, []
    for split in ("val", "test"):
        results[split] = _split_metrics(rows[split], y[split], proba[split], classes, cfg, seed)
        scored = [(rows[split], proba[split], check.score(seen[split]))]
        if split in unknown_logits:
            extra_proba = softmax(unknown_logits[split], temperature)
            extra_scores = check.score(unknown_seen[split])
            results[split]["unknown_type_tumours"] = unknown_type_detection(
                unknown[split], extra_proba, classes, check.rejects(extra_scores)
            )
            scored.append((unknown[split], extra_proba, extra_scores))
        for members, split_proba, scores in scored:
            predictions.append(
                members[["image_id", "source", "label"]]
                .assign(split=split, predicted=[classes[k] for k in split_proba.argmax(axis=1)])
                .join(pd.DataFrame(split_proba.round(6), columns=[f"p_{c}" for c in classes]))
                .assign(ood_score=scores.round(4), ood_verdict=np.where(check.rejects(scores), NOT_MRI, "brain MRI"))
            )
    _write_plot_data(metrics_dir / "evaluate", y["test"], proba["test"], classes)
    save_figures(y["test"], proba["test"], classes, metrics_dir / "train", cfg.out_dir)
    located, panels = _explain(model, meta, rows["test"], images["test"], y["test"], proba["test"], cfg, seed)
    gradcam_figure(panels, cfg.out_dir / "gradcam.png")
    ood_figure(ood_scores, check.threshold, cfg.out_dir / "ood_scores.png")

    calibration = calibration_summary(
        {s: logits[s] for s in ("val", "test")}, {s: y[s] for s in ("val", "test")}, temperature
    )
    payload = {
        "model": meta.model_name,
        "data_version": meta.data_version,
        **results,
        "calibration": calibration,
        "localisation": located[DEFAULT_SALIENCY],
        "localisation_methods": located,
        "ood": ood,
        "tumour_removal": tumour_removal(model, meta, rows["test"]),
    }
    (metrics_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    pd.concat(predictions, ignore_index=True).to_csv(cfg.out_dir / "predictions.csv", index=False)
    reports = {
        name: json.loads(path.read_text())
        for name, path in (("dedup", dedup_report), ("split", split_report))
        if path and path.exists()
    }
    write_model_card(
        cfg.out_dir / "MODEL_CARD.md", meta=meta, table=table, metrics=payload, reports=reports, out_dir=cfg.out_dir
    )
    summary = {
        split: {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4)}
        for split, r in results.items()
    }
    summary["ood"] = {
        "test_false_rejection_rate": ood["test"]["false_rejection_rate"],
        "non_mri_detection_rate": ood["non_mri"]["detection_rate"],
    }
    return summary
