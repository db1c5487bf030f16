"""External sets: labelled folders or zips from outside the training sources, each evaluated under its own name.

A set may have any label shape. Its folders map (``evaluate.external[].labels``)
to one of the classes, to ``tumor_unknown`` (a tumour of unknown type, e.g.
Br35H ``yes`` or TCGA ``tumour``) or to ``no_tumor``:

- every set gets tumour detection: sensitivity and specificity of "the
  predicted class is not ``no_tumor``" and the ROC-AUC of
  ``P(any tumour) = 1 - P(no_tumor)``;
- a set holding two or more classes also gets multi-class metrics over the
  classes it holds (a 3-class set without pituitary is not averaged with a
  zero for pituitary); ``tumor_unknown`` images take no part in them;
- with a patient table (``patients``), results per patient too: a patient
  is positive when any of its slices is, its score is its highest slice
  score, and the slice-level intervals resample patients, not slices.

Images that the dedup stage's criterion pairs with a train or val image are
listed in ``overlaps.csv``, counted, and left out of the ``clean`` numbers
(``with_overlap`` keeps them, to show how much they would flatter the
model). The out-of-distribution check the evaluate stage fitted gives each
set's refusal rate.

Each set is one DVC stage (``external@<index>`` in ``dvc.yaml``, generated
from ``evaluate.external``) that depends on the set's files, the checkpoint
and the evaluate stage's ``ood.npz`` and ``temperature.json``; ``brainmri
external`` runs the same code on an existing checkpoint without DVC.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..config import ConfigError, DedupConfig, ExternalSetConfig, PatientTable
from ..core.imaging import BadImage, decode_image
from ..core.inputs import INPUT_LIMITS, iter_inputs
from ..core.preprocess import normalise_input
from ..dataset.fingerprints import Fingerprints, confirmed_pairs, fingerprint
from ..dataset.patients import read_patient_table as read_table
from ..dataset.patients import table_in_zip
from ..model.ood import NOT_MRI, OODCheck
from .metrics import detection_metrics, present_class_metrics

NO_TUMOUR = "no_tumor"


@dataclass
class ExternalSet:
    """An external set as read: one row per usable image (``file``, ``relative``, ``label``, ``patient``)."""

    rows: pd.DataFrame
    images: list[np.ndarray]
    counts: dict[str, int]


def read_patient_table(spec: ExternalSetConfig) -> dict[str, str]:
    """The set's patient table as ``file → patient``: looked for inside the set, then beside it, and checked as
    a source's patient table is (``brainmri.dataset.patients``: a missing cell or a file listed twice is an error)."""
    table = spec.patients.table
    found = None
    if spec.path.is_dir():
        inside = sorted(spec.path.glob(f"**/{table}"))
        if len(inside) > 1:
            raise ConfigError(
                f"{spec.path}: several files match the patient table {table!r}: {', '.join(map(str, inside[:3]))}"
            )
        found = (str(inside[0]), inside[0].read_bytes()) if inside else None
    elif spec.path.suffix.lower() == ".zip":
        found = table_in_zip(spec.path, table)
    beside = spec.path.parent / table
    if found is None and beside.is_file():
        found = (str(beside), beside.read_bytes())
    if found is None:
        raise FileNotFoundError(
            f"external set {spec.name}: patient table {table!r} is neither inside {spec.path} nor beside it"
        )
    name, data = found
    columns = PatientTable(name=table, key=spec.patients.file_column, id=spec.patients.patient_column)
    frame = read_table(name, columns, data)
    return dict(zip(frame.index.str.strip("/"), frame["patient_id"], strict=True))


def patient_of(relative: str, table: dict[str, str]) -> str:
    """The patient of an image by its path inside the set: the longest trailing part of it the table names
    ("" if none)."""
    parts = relative.split("/")
    return next((table[key] for i in range(len(parts)) if (key := "/".join(parts[i:])) in table), "")


def read_external(spec: ExternalSetConfig) -> ExternalSet:
    """An external set's images with labels from the nearest enclosing folder named in ``spec.labels``.

    Counts the files that had no mapped folder or could not be decoded, and
    (with a patient table) the images the table does not name; with a patient
    subset, the images of the patients it leaves out (and those without a
    patient) are counted as ``outside_patient_subset`` and not read.
    """
    if not spec.path.exists():
        raise FileNotFoundError(f"external set {spec.name}: {spec.path} not found")
    patients = read_patient_table(spec) if spec.patients else None
    subset = spec.patients.subset if spec.patients else None
    kept = subset.select(patients.values()) if subset is not None else None
    rows, images, counts = [], [], Counter(unlabelled=0, unreadable=0)
    if kept is not None:
        counts["outside_patient_subset"] = 0
    prefix = len(str(spec.path))
    for name, data, _ in iter_inputs([spec.path]):
        relative = name[prefix:].lstrip("/")
        folders = Path(relative).parts[:-1]
        label = next((spec.labels[f] for f in reversed(folders) if f in spec.labels), None)
        if label is None:
            counts["unlabelled"] += 1
            continue
        patient = patient_of(relative, patients) if patients else ""
        if kept is not None and patient not in kept:
            counts["outside_patient_subset"] += 1
            continue
        try:
            images.append(decode_image(data or b"", name, INPUT_LIMITS))
        except BadImage:
            counts["unreadable"] += 1
            continue
        rows.append({"file": name, "relative": relative, "label": label, "patient": patient})
    frame = pd.DataFrame(rows, columns=["file", "relative", "label", "patient"])
    if patients is not None:
        counts["without_patient"] = int((frame["patient"] == "").sum())
    return ExternalSet(frame, images, dict(counts))


def external_overlaps(reference: Fingerprints, images: list[np.ndarray], dedup: DedupConfig) -> pd.DataFrame:
    """Pairs (external row, train/val image) that the dedup stage's criterion calls duplicates."""
    if not images:
        return pd.DataFrame(
            {
                "row": np.zeros(0, dtype=int),
                "image_id": np.zeros(0, dtype=str),
                "hamming": np.zeros(0, dtype=int),
                "correlation": np.zeros(0),
            }
        )
    prints = [
        fingerprint(Image.fromarray(image), dedup.hash_size, dedup.thumb_size, dedup.frame_spread) for image in images
    ]
    words, thumb = reference.hashes.shape[1], reference.thumbs.shape[1]
    combined = Fingerprints(
        np.concatenate([reference.image_ids, np.array([f"external:{k}" for k in range(len(images))])]),
        np.concatenate([reference.hashes, np.array([h for h, _ in prints]).reshape(-1, words)]),
        np.concatenate([reference.thumbs, np.array([t for _, t in prints], dtype=np.float32).reshape(-1, thumb)]),
    )
    i, j, hamming, correlation = confirmed_pairs(combined, dedup.max_hamming, dedup.min_correlation)
    n = len(reference.image_ids)
    cross = (i < n) & (j >= n)  # pairs come with i < j, so the external image is always j
    return pd.DataFrame(
        {
            "row": j[cross] - n,
            "image_id": reference.image_ids[i[cross]],
            "hamming": hamming[cross],
            "correlation": correlation[cross].round(4),
        }
    ).sort_values(["row", "image_id"], ignore_index=True)


def external_metrics(
    labels: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    *,
    rejected: np.ndarray | None = None,
    patients: np.ndarray | None = None,
    resamples: int = 0,
    seed: int = 0,
) -> dict:
    """Metrics of one external set (or its clean part) from its labels (class names or ``tumor_unknown``) and
    calibrated probabilities.

    ``rejected``: the OOD check's verdict per image (None: not checked).
    ``patients``: patient id per image ("" where unknown; None: no table).
    """
    labels = np.asarray(labels, dtype=str)
    result: dict = {"n": int(len(labels)), "labels": dict(sorted(Counter(labels.tolist()).items()))}
    if rejected is not None:
        result["ood_rejected"] = int(rejected.sum())
        result["ood_rejection_rate"] = float(rejected.mean()) if len(labels) else None
    if len(labels) == 0:
        return result
    # an image without a patient is a group of its own (a name no patient id can have)
    groups = np.array([p or f"\0image {i}" for i, p in enumerate(patients)]) if patients is not None else None
    typed = np.isin(labels, classes)
    y = np.array([classes.index(label) for label in labels[typed]], dtype=int)
    present = sorted(set(y.tolist()))
    if len(present) >= 2:
        result["classification"] = present_class_metrics(
            y, proba[typed], present, classes, resamples, seed, groups=groups[typed] if groups is not None else None
        )
    no_tumour = classes.index(NO_TUMOUR)
    actual, called, score = labels != NO_TUMOUR, proba.argmax(axis=1) != no_tumour, 1.0 - proba[:, no_tumour]
    result["tumour_detection"] = detection_metrics(actual, called, score, resamples, seed, groups=groups)
    result["tumour_detection"]["intervals_resample"] = "images" if patients is None else "patients"
    if patients is not None:
        with_patient = patients != ""
        per_patient = (
            pd.DataFrame(
                {
                    "patient": patients[with_patient],
                    "actual": actual[with_patient],
                    "called": called[with_patient],
                    "score": score[with_patient],
                }
            )
            .groupby("patient", sort=True)
            .max()
        )
        result["per_patient"] = detection_metrics(
            per_patient["actual"].to_numpy(),
            per_patient["called"].to_numpy(),
            per_patient["score"].to_numpy(),
            resamples,
            seed,
        )
    return result


def evaluate_external_set(
    spec: ExternalSetConfig,
    model,
    meta,
    *,
    check: OODCheck | None,
    temperature: float,
    reference: Fingerprints,
    split_of: dict[str, str],
    dedup: DedupConfig,
    resamples: int,
    seed: int,
    out_dir: Path,
) -> dict:
    """Evaluate one set; write ``out_dir/overlaps.csv`` and ``out_dir/predictions.csv``; return its metrics."""
    from ..model.inference import check_features, logits_and_features
    from ..model.temperature import softmax

    classes = list(meta.classes)
    data = read_external(spec)
    rows, images = data.rows, data.images
    pairs = external_overlaps(reference, images, dedup)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs.assign(
        file=rows["file"].to_numpy(dtype=str)[pairs["row"].to_numpy(dtype=int)], split=pairs["image_id"].map(split_of)
    )[["file", "image_id", "split", "hamming", "correlation"]].to_csv(out_dir / "overlaps.csv", index=False)
    views = [
        normalise_input(image, meta.preprocess) for image in images
    ]  # overlaps above are found on the images as given
    logits, features = (
        logits_and_features(model, views, meta.image_size) if images else (np.zeros((0, len(classes))), None)
    )
    proba = softmax(logits, temperature)
    scores = (
        check.score(check_features(model, views, meta.image_size, check.view, features))
        if check is not None and images
        else None
    )
    rejected = check.rejects(scores) if scores is not None else (np.zeros(0, dtype=bool) if check is not None else None)
    clean = ~np.isin(np.arange(len(rows)), pairs["row"])
    predictions = (
        rows.drop(columns="relative")
        .assign(
            predicted=[classes[k] for k in proba.argmax(axis=1)],
            p_tumour=(1.0 - proba[:, classes.index(NO_TUMOUR)]).round(6),
            overlaps_train_val=~clean,
        )
        .join(pd.DataFrame(proba.round(6), columns=[f"p_{c}" for c in classes]))
    )
    if scores is not None:
        predictions = predictions.assign(
            ood_score=scores.round(4), ood_verdict=np.where(rejected, NOT_MRI, "brain MRI")
        )
    predictions.to_csv(out_dir / "predictions.csv", index=False)

    labels, patients = rows["label"].to_numpy(dtype=str), rows["patient"].to_numpy(dtype=str) if spec.patients else None

    def part(members: np.ndarray) -> dict:
        return external_metrics(
            labels[members],
            proba[members],
            classes,
            rejected=rejected[members] if rejected is not None else None,
            patients=patients[members] if patients is not None else None,
            resamples=resamples,
            seed=seed,
        )

    return {
        "name": spec.name,
        "path": str(spec.path),
        "model": meta.model_name,
        "data_version": meta.data_version,
        "images": int(len(rows)),
        **data.counts,
        "overlapping_train_val": int((~clean).sum()),
        "clean": part(clean),
        "with_overlap": part(np.ones(len(rows), dtype=bool)),
    }


def run_external(
    spec: ExternalSetConfig,
    *,
    checkpoint: Path,
    ood: Path | None,
    temperature: Path | None,
    split_csv: Path,
    fingerprints: Path,
    dedup: DedupConfig,
    resamples: int,
    seed: int,
    out_dir: Path,
    metrics_path: Path,
) -> dict:
    """Evaluate one external set with an existing checkpoint and what the evaluate stage fitted for it
    (``ood``, ``temperature``: None to go without); ``split_csv`` and the dedup stage's ``fingerprints``
    name the train/val images to check overlaps against. Writes ``metrics_path`` (JSON) and ``out_dir``."""
    from ..core.hashing import file_digest
    from ..model.checkpoint import load_checkpoint
    from ..model.ood import load_ood_check
    from ..model.temperature import Temperature

    for path in (checkpoint, split_csv, fingerprints):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found (run the pipeline up to the evaluate stage, or pass its path)")
    model, meta = load_checkpoint(checkpoint)
    check = load_ood_check(ood, checkpoint) if ood is not None else None
    scale = Temperature.load(temperature, file_digest(checkpoint)).value if temperature is not None else 1.0
    table = pd.read_csv(split_csv, keep_default_na=False)
    known = table[table["split"].isin(["train", "val"])]
    reference = Fingerprints.load(fingerprints).subset(known["image_id"])
    result = evaluate_external_set(
        spec,
        model,
        meta,
        check=check,
        temperature=scale,
        reference=reference,
        split_of=dict(zip(known["image_id"], known["split"], strict=True)),
        dedup=dedup,
        resamples=resamples,
        seed=seed,
        out_dir=out_dir,
    )
    result["calibrated"] = temperature is not None
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _value(metrics: dict | None, key: str) -> str:
    if not metrics or metrics.get(key) is None:
        return "n/a"
    interval = metrics.get(f"{key}_ci95")
    return f"{metrics[key]:.3f}" + (f" [{interval[0]:.3f}-{interval[1]:.3f}]" if interval else "")


def summary_table(result: dict) -> str:
    """A plain-text table of one set's results for the terminal (``with_overlap`` only when it differs from
    ``clean``)."""
    lines = [
        f"{result['name']} ({result['path']}): {result['images']} images used, {result['unlabelled']} unlabelled, "
        f"{result['unreadable']} unreadable"
        + (f", {result['without_patient']} without a patient" if "without_patient" in result else "")
        + f"; {result['overlapping_train_val']} overlap train/val (left out of clean)",
        f"{'tumour detection':<26}{'n':>6}  {'sensitivity [95% CI]':<24}{'specificity [95% CI]':<24}"
        f"{'ROC-AUC [95% CI]':<24}",
    ]
    parts = ("clean", "with_overlap") if result["overlapping_train_val"] else ("clean",)
    for part in parts:
        for level, d in (
            ("slices", result[part].get("tumour_detection")),
            ("patients", result[part].get("per_patient")),
        ):
            if d is not None:
                lines.append(
                    f"{f'{part}, {level}':<26}{d['n']:>6}  {_value(d, 'sensitivity'):<24}"
                    f"{_value(d, 'specificity'):<24}{_value(d, 'roc_auc'):<24}"
                )
    for part in parts:
        r = result[part]
        if c := r.get("classification"):
            lines.append(
                f"{part}: {len(c['classes'])} classes ({', '.join(c['classes'])}), n={c['n']}: "
                f"accuracy {_value(c, 'accuracy')}, "
                f"macro-F1 {_value(c, 'macro_f1')}, balanced accuracy {c['balanced_accuracy']:.3f}"
            )
        if r.get("ood_rejection_rate") is not None:
            lines.append(
                f"{part}: refused as not a brain MRI: {r['ood_rejected']} of {r['n']} ({r['ood_rejection_rate']:.2%})"
            )
    return "\n".join(line.rstrip() for line in lines)
