"""Temperature scaling: hand-computed softmax and likelihood, recovery of a known temperature, the saved file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainmri.model.temperature import (
    Temperature,
    TemperatureMismatch,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)


def test_softmax_at_a_temperature_by_hand():
    logits = np.array([[0.0, math.log(3.0)]])
    assert np.allclose(softmax(logits), [[0.25, 0.75]])
    assert np.allclose(softmax(logits, 0.5), [[0.1, 0.9]]), "T = 0.5 doubles the logits: odds 3 become 9"
    assert np.allclose(softmax(logits, 1e9), [[0.5, 0.5]])


def test_negative_log_likelihood_by_hand_and_without_underflow():
    logits = np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    y = np.array([1, 0])
    assert negative_log_likelihood(logits, y) == pytest.approx(-(math.log(0.75) + math.log(0.25)) / 2)
    extreme = np.array([[0.0, 2000.0]])
    assert negative_log_likelihood(extreme, np.array([0])) == pytest.approx(2000.0), (
        "a confident mistake costs its margin, not inf"
    )


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_fit_recovers_the_temperature_the_labels_were_drawn_at(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(logits, true_temperature)])
    fitted = fit_temperature(logits, y)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    assert negative_log_likelihood(logits, y, fitted) <= negative_log_likelihood(logits, y, 1.0)
    assert (softmax(logits, fitted).argmax(axis=1) == logits.argmax(axis=1)).all(), "the predicted class never changes"


def test_fit_refuses_no_images():
    with pytest.raises(ValueError, match="no images"):
        fit_temperature(np.zeros((0, 4)), np.zeros(0, dtype=int))


def test_saved_temperature_loads_only_for_its_checkpoint(tmp_path):
    path = tmp_path / "temperature.json"
    Temperature(0.4837, "a" * 64).save(path)
    assert Temperature.load(path, "a" * 64) == Temperature(0.4837, "a" * 64, "val")
    with pytest.raises(TemperatureMismatch, match="fitted for another checkpoint"):
        Temperature.load(path, "b" * 64)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(TemperatureMismatch, match="broken.json is not a temperature file"):
        Temperature.load(tmp_path / "broken.json", "a" * 64)
