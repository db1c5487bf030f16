"""Classification metrics a reviewer asks for, computed with scikit-learn.

Inputs are plain arrays: integer true labels ``y`` (indices into ``classes``)
and predicted probabilities ``proba`` ``[N, classes]``. Every function is
deterministic given its inputs (and the seed, for the bootstrap).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: the |accuracy - confidence| gap per confidence bin, weighted by the bin's share."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def reliability_table(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[dict]:
    """Rows ``bin, confidence, accuracy, count`` for a reliability diagram (empty bins omitted)."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {
            "bin": round(float((edges[b] + edges[b + 1]) / 2), 3),
            "confidence": round(float(confidence[which == b].mean()), 4),
            "accuracy": round(float(correct[which == b].mean()), 4),
            "count": int((which == b).sum()),
        }
        for b in range(bins)
        if (which == b).any()
    ]


def _roc_auc(y: np.ndarray, proba: np.ndarray, k: int) -> float | None:
    positives = y == k
    if positives.all() or not positives.any():
        return None  # undefined with one class present
    return float(skm.roc_auc_score(positives, proba[:, k]))


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro and per-class P/R/F1, MCC, kappa, OvR ROC-AUC, log loss, ECE."""
    labels = list(range(len(classes)))
    predicted = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    aucs = {name: _roc_auc(y, proba, k) for k, name in enumerate(classes)}
    defined = [auc for auc in aucs.values() if auc is not None]
    clipped = np.clip(proba, 1e-15, 1.0)
    return {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, predicted)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, predicted)) if len(set(y)) > 0 else None,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(skm.f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "mcc": float(skm.matthews_corrcoef(y, predicted)),
        "cohen_kappa": float(skm.cohen_kappa_score(y, predicted, labels=labels)),
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "log_loss": float(skm.log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)),
        "ece": expected_calibration_error(y, proba),
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
                "roc_auc": aucs[name],
            }
            for k, name in enumerate(classes)
        },
    }


def bootstrap_ci(y: np.ndarray, predicted: np.ndarray, n_classes: int, resamples: int, seed: int) -> dict:
    """95% percentile-bootstrap intervals for accuracy and macro-F1 (resampling images with replacement)."""
    if resamples == 0 or len(y) == 0:
        return {}
    rng = np.random.default_rng(seed)
    labels = list(range(n_classes))
    accuracy, macro_f1 = [], []
    for _ in range(resamples):
        rows = rng.integers(0, len(y), len(y))
        accuracy.append(np.mean(y[rows] == predicted[rows]))
        macro_f1.append(skm.f1_score(y[rows], predicted[rows], labels=labels, average="macro", zero_division=0))
    return {
        "accuracy_ci95": [float(np.percentile(accuracy, 2.5)), float(np.percentile(accuracy, 97.5))],
        "macro_f1_ci95": [float(np.percentile(macro_f1, 2.5)), float(np.percentile(macro_f1, 97.5))],
    }


def tumour_detection(y: np.ndarray, predicted: np.ndarray, no_tumour_index: int) -> dict:
    """Any-tumour view: sensitivity (tumours called tumour) and specificity (no-tumour called no-tumour)."""
    actual = y != no_tumour_index
    called = predicted != no_tumour_index
    return {
        "sensitivity": float((called & actual).sum() / actual.sum()) if actual.any() else None,
        "specificity": float((~called & ~actual).sum() / (~actual).sum()) if (~actual).any() else None,
        "missed_tumours": int((~called & actual).sum()),
    }
