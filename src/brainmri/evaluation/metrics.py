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
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
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


def bootstrap_intervals(statistics: dict, n: int, resamples: int, seed: int, groups: np.ndarray | None = None) -> dict:
    """95% percentile-bootstrap intervals ``<name>_ci95`` of each ``statistic(rows)`` over resampled row indices.

    With ``groups`` (one id per row, e.g. the patient), whole groups are
    drawn with replacement, because rows of one group (slices of one scan)
    are not independent and resampling them one by one would give intervals
    too narrow. A resample where a statistic is undefined (``None``: no
    tumour drawn for a sensitivity) does not count for it; with no defined
    resample the interval is ``None``.
    """
    if resamples == 0 or n == 0:
        return {}
    rng = np.random.default_rng(seed)
    members = None
    if groups is not None:
        _, which = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(which == g) for g in range(which.max() + 1)]
    values: dict[str, list[float]] = {name: [] for name in statistics}
    for _ in range(resamples):
        if members is None:
            rows = rng.integers(0, n, n)
        else:
            rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        for name, statistic in statistics.items():
            value = statistic(rows)
            if value is not None:
                values[name].append(value)
    return {
        f"{name}_ci95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None
        for name, v in values.items()
    }


def bootstrap_ci(
    y: np.ndarray,
    predicted: np.ndarray,
    n_classes: int,
    resamples: int,
    seed: int,
    labels: list[int] | None = None,
    groups: np.ndarray | None = None,
) -> dict:
    """95% percentile-bootstrap intervals for accuracy and macro-F1 (resampling images, or ``groups``, with
    replacement).

    ``labels``: the classes macro-F1 averages over (default: all ``n_classes``).
    """
    labels = list(range(n_classes)) if labels is None else labels
    return bootstrap_intervals(
        {
            "accuracy": lambda rows: np.mean(y[rows] == predicted[rows]),
            "macro_f1": lambda rows: skm.f1_score(
                y[rows], predicted[rows], labels=labels, average="macro", zero_division=0
            ),
        },
        len(y),
        resamples,
        seed,
        groups,
    )


def tumour_detection(y: np.ndarray, predicted: np.ndarray, no_tumour_index: int) -> dict:
    """Any-tumour view: sensitivity (tumours called tumour) and specificity (no-tumour called no-tumour)."""
    actual = y != no_tumour_index
    called = predicted != no_tumour_index
    return {
        "sensitivity": sensitivity(actual, called),
        "specificity": specificity(actual, called),
        "missed_tumours": int((~called & actual).sum()),
    }


def sensitivity(actual: np.ndarray, called: np.ndarray) -> float | None:
    """Share of actual positives called positive (None without positives)."""
    return float((called & actual).sum() / actual.sum()) if actual.any() else None


def specificity(actual: np.ndarray, called: np.ndarray) -> float | None:
    """Share of actual negatives called negative (None without negatives)."""
    return float((~called & ~actual).sum() / (~actual).sum()) if (~actual).any() else None


def binary_roc_auc(actual: np.ndarray, score: np.ndarray) -> float | None:
    """ROC-AUC of ``score`` for ``actual`` (None with one kind present)."""
    return float(skm.roc_auc_score(actual, score)) if actual.any() and not actual.all() else None


def detection_metrics(
    actual: np.ndarray,
    called: np.ndarray,
    score: np.ndarray,
    resamples: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict:
    """Binary detection (tumour or not): counts, sensitivity, specificity, ROC-AUC of ``score``, with bootstrap CIs."""
    actual, called = np.asarray(actual, dtype=bool), np.asarray(called, dtype=bool)
    result = {
        "n": int(len(actual)),
        "positives": int(actual.sum()),
        "negatives": int((~actual).sum()),
        "sensitivity": sensitivity(actual, called),
        "specificity": specificity(actual, called),
        "roc_auc": binary_roc_auc(actual, score),
        "missed": int((actual & ~called).sum()),
        "false_alarms": int((~actual & called).sum()),
    }
    result.update(
        bootstrap_intervals(
            {
                "sensitivity": lambda rows: sensitivity(actual[rows], called[rows]),
                "specificity": lambda rows: specificity(actual[rows], called[rows]),
                "roc_auc": lambda rows: binary_roc_auc(actual[rows], score[rows]),
            },
            len(actual),
            resamples,
            seed,
            groups,
        )
    )
    return result


def present_class_metrics(
    y: np.ndarray,
    proba: np.ndarray,
    present: list[int],
    classes: list[str],
    resamples: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict:
    """Multi-class metrics over the classes a set holds (``present``), with bootstrap CIs.

    The prediction is still the arg-max over all the model's classes, so an
    image called a class the set lacks counts as an error (a lower recall of
    its true class); only the averages leave the absent classes out, which
    would otherwise enter macro-F1 as zeros and understate a 3-class set.
    """
    predicted = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted, labels=present, zero_division=0)
    aucs = [_roc_auc(y, proba, k) for k in present]
    defined = [auc for auc in aucs if auc is not None]
    result = {
        "classes": [classes[k] for k in present],
        "n": int(len(y)),
        "accuracy": float(np.mean(predicted == y)),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "per_class": {
            classes[k]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "roc_auc": aucs[i],
            }
            for i, k in enumerate(present)
        },
    }
    result.update(bootstrap_ci(y, predicted, len(classes), resamples, seed, labels=present, groups=groups))
    return result
