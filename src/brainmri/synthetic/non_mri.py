"""Pictures that are not brain MRI, to measure how many the out-of-distribution check (``brainmri.model.ood``)
rejects: scikit-image's bundled photos and generated noise, gradients, text pages and radiograph look-alikes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.imaging import to_grey

SKIMAGE_SAMPLES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "checkerboard",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
"""scikit-image's sample images that ship inside the wheel (no download). ``shepp_logan_phantom`` is left
out on purpose: it is a synthetic head slice, closer to the demo phantoms than to a non-MRI picture."""

GENERATED_PER_KIND = 4
GENERATED_SIZE = 256


def _skimage_samples() -> list[tuple[str, str, np.ndarray]]:
    from skimage import data

    samples = []
    for name in SKIMAGE_SAMPLES:
        pixels = np.asarray(getattr(data, name)())
        if pixels.dtype == np.bool_:
            pixels = pixels.astype(np.uint8) * 255
        samples.append(("photo", f"skimage:{name}", to_grey(Image.fromarray(pixels))))
    return samples


def _text_screenshot(rng: np.random.Generator) -> np.ndarray:
    """Dark text lines on a light page, like a screenshot of a document or a report."""
    image = Image.new("L", (GENERATED_SIZE, GENERATED_SIZE), int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(image)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz      0123456789.,:"))
    for top in range(8, GENERATED_SIZE - 12, int(rng.integers(12, 18))):
        line = "".join(rng.choice(letters, int(rng.integers(15, 40))))
        draw.text((int(rng.integers(4, 20)), top), line, fill=int(rng.integers(0, 60)))
    return np.asarray(image)


def _chest_xray_like(rng: np.random.Generator) -> np.ndarray:
    """A bright torso with two dark lung fields and rib arcs, blurred: the look of a chest radiograph."""
    s = GENERATED_SIZE
    image = Image.new("L", (s, s), int(rng.integers(10, 40)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((s * 0.08, s * 0.05, s * 0.92, s * 1.1), fill=int(rng.integers(170, 210)))
    for left in (True, False):
        x0 = s * (0.18 if left else 0.54) + rng.normal(0, 4)
        draw.ellipse((x0, s * 0.18, x0 + s * 0.28, s * 0.85), fill=int(rng.integers(50, 90)))
    for k in range(7):
        y = s * (0.2 + 0.09 * k)
        draw.arc((s * 0.12, y, s * 0.88, y + s * 0.25), 200, 340, fill=int(rng.integers(140, 190)), width=4)
    draw.rectangle((s * 0.46, s * 0.1, s * 0.54, s), fill=int(rng.integers(200, 235)))
    blurred = image.filter(ImageFilter.GaussianBlur(3))
    return np.clip(np.asarray(blurred, dtype=np.float64) + rng.normal(0, 6, (s, s)), 0, 255).astype(np.uint8)


def _generated(rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    s = GENERATED_SIZE
    yy, xx = np.mgrid[:s, :s] / (s - 1)
    samples = []
    for k in range(GENERATED_PER_KIND):
        noise = (
            rng.integers(0, 256, (s, s)).astype(np.uint8)
            if k % 2
            else np.clip(rng.normal(128, 50, (s, s)), 0, 255).astype(np.uint8)
        )
        samples.append(("noise", f"noise:{k}", noise))
        smooth = Image.fromarray(rng.integers(0, 256, (s // 16, s // 16)).astype(np.uint8)).resize(
            (s, s), Image.Resampling.BICUBIC
        )
        samples.append(("noise", f"smooth_noise:{k}", np.asarray(smooth)))
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        radial = np.hypot(xx - rng.uniform(0.2, 0.8), yy - rng.uniform(0.2, 0.8))
        gradient = ramp if k % 2 else 1 - radial / radial.max()
        samples.append(("gradient", f"gradient:{k}", (gradient * 255).round().astype(np.uint8)))
        samples.append(("screenshot", f"text_screenshot:{k}", _text_screenshot(rng)))
        samples.append(("chest_xray_like", f"chest_xray_like:{k}", _chest_xray_like(rng)))
    return samples


def non_mri_images(seed: int) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, name, grey uint8 image)`` for pictures that are not brain MRI, to measure the check's detection rate.

    Kinds: ``photo`` (scikit-image's bundled samples), ``noise``,
    ``gradient``, ``screenshot`` (text pages) and ``chest_xray_like``
    (generated radiograph look-alikes); generated ones depend only on ``seed``.
    """
    return _skimage_samples() + _generated(np.random.default_rng(seed))
