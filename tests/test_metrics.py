"""Metrics against small cases computed by hand."""

import numpy as np
import pytest

from brainmri.evaluation.metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    tumour_detection,
)
from conftest import CLASSES


def one_hot_proba(predicted, confidence=0.7, k=4):
    proba = np.full((len(predicted), k), (1 - confidence) / (k - 1))
    proba[np.arange(len(predicted)), predicted] = confidence
    return proba


def test_hand_computed_case():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    predicted = np.array([0, 1, 1, 1, 2, 2, 3, 0])
    m = classification_metrics(y, one_hot_proba(predicted), CLASSES)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # glioma: TP 1, FP 1 (a pituitary), FN 1 → P = R = F1 = 0.5
    assert m["per_class"]["glioma"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "roc_auc": m["per_class"]["glioma"]["roc_auc"]}
    )
    # meningioma: TP 2, FP 1 → P 2/3, R 1, F1 0.8
    assert m["per_class"]["meningioma"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["meningioma"]["f1"] == pytest.approx(0.8)
    # pituitary: TP 1, FN 1 → P 1, R 0.5, F1 2/3
    assert m["per_class"]["pituitary"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 1.0 + 2 / 3) / 4)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)
    # every prediction has confidence 0.7 and 6/8 are right: ECE = |0.75 - 0.7|
    assert m["ece"] == pytest.approx(0.05)
    # log loss: -log(0.7) for right, -log(0.1) for wrong
    assert m["log_loss"] == pytest.approx((6 * -np.log(0.7) + 2 * -np.log(0.1)) / 8)
    # kappa: po = 0.75, pe = sum(row*col)/64 = (2*2 + 2*3 + 2*2 + 2*1)/64 = 16/64
    assert m["cohen_kappa"] == pytest.approx((0.75 - 0.25) / 0.75)
    # no_tumor is perfectly separated by its probability
    assert m["per_class"]["no_tumor"]["roc_auc"] == pytest.approx(1.0)


def test_perfect_and_chance_calibration():
    y = np.array([0, 1, 2, 3])
    assert expected_calibration_error(y, one_hot_proba(y, 1.0)) == pytest.approx(0.0)
    assert expected_calibration_error(y, one_hot_proba((y + 1) % 4, 1.0)) == pytest.approx(1.0)


def test_tumour_detection_counts_missed_tumours():
    y = np.array([0, 1, 3, 2, 2])
    predicted = np.array([2, 1, 0, 2, 1])  # one tumour called no-tumour, one no-tumour called tumour
    result = tumour_detection(y, predicted, no_tumour_index=2)
    assert result == {"sensitivity": pytest.approx(2 / 3), "specificity": 0.5, "missed_tumours": 1}


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    predicted = np.where(rng.random(200) < 0.8, y, (y + 1) % 4)
    ci = bootstrap_ci(y, predicted, 4, resamples=300, seed=5)
    accuracy = (y == predicted).mean()
    assert ci["accuracy_ci95"][0] < accuracy < ci["accuracy_ci95"][1]
    assert ci["accuracy_ci95"][1] - ci["accuracy_ci95"][0] < 0.15
    assert bootstrap_ci(y, predicted, 4, resamples=300, seed=5) == ci
