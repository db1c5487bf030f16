"""benchmarks/ct_in_sources.py's screening measure: a flat white skull ring (CT brain window) ranks above MRI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture
def ct_in_sources(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ct_in_sources

    return ct_in_sources


def _head(rings: list[tuple[int, int]], noise: float, seed: int = 0) -> np.ndarray:
    """Concentric discs from the outside in, ``(inset, grey)``, with Gaussian noise of ``noise`` grey levels."""
    image = Image.new("L", (256, 256), 0)
    draw = ImageDraw.Draw(image)
    for inset, grey in rings:
        draw.ellipse((20 + inset, 30 + inset, 236 - inset, 226 - inset), fill=grey)
    pixels = np.asarray(image, dtype=np.float64)
    pixels[pixels > 0] += np.random.default_rng(seed).normal(0, noise, int((pixels > 0).sum()))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def test_a_saturated_skull_ring_scores_high_and_textured_scalp_fat_low(ct_in_sources):
    # brain window CT: skin, then skull at the top grey level (clipped, so flat), brain mid-grey with noise
    ct = _head([(0, 120), (4, 255), (16, 110)], noise=0)
    ct[ct == 110] = np.clip(110 + np.random.default_rng(1).normal(0, 6, int((ct == 110).sum())), 0, 250).astype(
        np.uint8
    )
    # T1 MRI: bright textured scalp fat, dark skull, grey brain, noise everywhere
    mri = _head([(0, 230), (6, 20), (14, 120)], noise=8)
    ct_share, mri_share = ct_in_sources.rim_saturation(ct), ct_in_sources.rim_saturation(mri)
    assert ct_share > 0.5 > 0.05 > mri_share


def test_an_empty_image_has_no_rim(ct_in_sources):
    assert ct_in_sources.rim_saturation(np.zeros((64, 64), dtype=np.uint8)) == 0.0
