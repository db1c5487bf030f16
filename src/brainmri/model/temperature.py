"""Temperature scaling: probabilities that mean what they say.

A network's softmax is not a probability until it is calibrated. Label
smoothing (``train.label_smoothing``) pulls it towards uniform, so a model
that is right far more often than its confidence says is under-confident;
``metrics.json`` reports the ECE and log loss with and without scaling (under
``calibration``; README has the measured ones). Temperature
scaling (Guo et al., 2017) divides the logits by one scalar ``T`` fitted on
the **validation** images by minimising their negative log-likelihood;
``T < 1`` sharpens, ``T > 1`` softens. The arg-max, and so accuracy and every
F1, is unchanged; only the confidence moves.

The evaluate stage fits it (``evaluate.temperature_scaling``) and saves it as
``<evaluate.out_dir>/temperature.json`` with the SHA-256 of the checkpoint it
was fitted for, like the out-of-distribution check; ``predict`` and
``export`` apply it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ..errors import UserError

LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
"""Search range of ``log T``: far wider than any temperature met in practice (about 0.3 to 3)."""


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``[N, K]`` of logits ``[N, K]`` divided by ``temperature``."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean ``-log p(true class)`` at ``temperature``; computed from log-softmax, so it never takes log 0."""
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``y`` (bounded search on ``log T``).

    The likelihood is convex in ``1/T``, so the bounded Brent search finds the
    one minimum; it never ends worse than ``T = 1`` by more than its tolerance.
    """
    if len(y) == 0:
        raise ValueError("cannot fit a temperature on no images")
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, y, math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(found.x))


class TemperatureMismatch(UserError, ValueError):
    """A temperature file fitted for another checkpoint, or not a temperature file at all."""


@dataclass(frozen=True)
class Temperature:
    """A fitted temperature and the checkpoint it belongs to."""

    value: float
    checkpoint_sha256: str
    fitted_on: str = "val"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(asdict(self), indent=2) + "\n"
        )  # JSON keeps a float exactly: predict uses the T evaluate used

    @classmethod
    def load(cls, path: Path, checkpoint_sha256: str) -> "Temperature":
        """Read ``path`` and make sure it was fitted for the checkpoint with ``checkpoint_sha256``."""
        try:
            fields = json.loads(Path(path).read_text())
            temperature = cls(
                value=float(fields["value"]),
                checkpoint_sha256=str(fields["checkpoint_sha256"]),
                fitted_on=str(fields["fitted_on"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise TemperatureMismatch(
                f"{path} is not a temperature file written by the evaluate stage ({error})"
            ) from None
        if not temperature.value > 0:
            raise TemperatureMismatch(f"{path}: temperature must be positive, got {temperature.value}")
        if temperature.checkpoint_sha256 != checkpoint_sha256:
            raise TemperatureMismatch(
                f"{path} was fitted for another checkpoint; pass the --temperature file the evaluate stage wrote "
                "for this model, or --no-temperature"
            )
        return temperature
