"""The one image preprocessing shared by training, evaluation, prediction and external sets.

Images enter the library as 8-bit grey arrays (see ``brainmri.core.imaging``); the
model sees ``image_size``-square float tensors in [0, 1] with one channel.
Channel replication and ImageNet normalisation for pretrained backbones happen
inside the model (``brainmri.model.architectures``).

Before resizing, ``normalise_input`` can take source shortcuts away from the
input (``train.input``, recorded in the checkpoint so every later use applies
what training used): ``crop: head`` cuts the canvas to the head's bounding
box, padded to a square (borders, burnt-in corner text and framing differ by
source, not by tumour); ``intensity: percentile`` maps the 1st-99th
percentile of the head's pixels to [0, 255] (brightness and histogram differ
by scanner and export). Both default to ``none``, which leaves the image
untouched. Every path into the model goes through ``prepare_grey`` (train
cache, evaluate) or ``normalise_input`` then ``to_model_input`` (predict,
external sets, Grad-CAM): the work is data-dependent, so it stays outside the
exported graphs (``brainmri.serving.export``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from brainmri.config import InputConfig

NO_INPUT = InputConfig()
"""The default: no crop, no intensity normalisation (the preprocessing of every checkpoint before ``train.input``)."""

HEAD_SIDE = 128
"""The head is looked for on a copy reduced to about this side: fast, and it smooths noise and thin text."""

HEAD_LEVELS = (5, 99, 0.1)
"""``(low percentile, high percentile, fraction)``: head pixels are above ``low + fraction * (high - low)``,
relative to the image's own levels like the dedup core frame (``brainmri.dataset.fingerprints.FRAME_LEVELS``)."""

HEAD_OPENING = 1
"""Opening iterations on the reduced mask first: lines a pixel or two thin there (a frame drawn around the
image, a ruler, text strokes) are cut away, so they neither join the head nor pass for it."""

HEAD_CLOSING = 2
"""Closing iterations on the reduced mask, joining a head split by dark structures into one region."""

HEAD_MARGIN = 0.03
"""The crop adds this fraction of the head's longer side on every side, so the skull outline is kept whole."""

INTENSITY_PERCENTILES = (1.0, 99.0)
"""``intensity: percentile`` maps these percentiles of the head's pixels to 0 and 255."""


def resize_grey(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Resize an 8-bit grey image to a square ``image_size`` with antialiasing (aspect ratio is not kept:
    brain slices are close to square and the sources are already square)."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got {pixels.dtype} {pixels.shape}")
    if pixels.shape == (image_size, image_size):
        return pixels
    image = Image.fromarray(pixels, mode="L").resize(
        (image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None
    )
    return np.asarray(image, dtype=np.uint8)


def head_mask(pixels: np.ndarray) -> np.ndarray | None:
    """Boolean mask (the image's shape) of the largest bright region, holes filled: the head; None on a flat image.

    The largest connected region, not every bright pixel: burnt-in text,
    rulers and logos are bright too, but small and apart from the head.
    """
    factor = max(1, round(max(pixels.shape) / HEAD_SIDE))
    small = (
        np.asarray(Image.fromarray(pixels).reduce(factor), dtype=np.float64)
        if factor > 1
        else pixels.astype(np.float64)
    )
    low_percentile, high_percentile, fraction = HEAD_LEVELS
    low, high = np.percentile(small, [low_percentile, high_percentile])
    if high <= low:
        return None
    bright = ndimage.binary_opening(small > low + fraction * (high - low), iterations=HEAD_OPENING)
    bright = ndimage.binary_closing(bright, iterations=HEAD_CLOSING, border_value=0)
    labels, count = ndimage.label(bright)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    mask = ndimage.binary_fill_holes(labels == largest)
    full = Image.fromarray(mask.astype(np.uint8) * 255).resize(pixels.shape[::-1], Image.Resampling.NEAREST)
    return np.asarray(full) > 127


def head_box(mask: np.ndarray) -> tuple[int, int, int]:
    """``(top, left, side)``: the square around the mask's bounding box plus ``HEAD_MARGIN``, centred on it
    (it may reach past the canvas)."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    longer = max(bottom - top, right - left)
    side = int(round(longer * (1 + 2 * HEAD_MARGIN)))
    return int(round((top + bottom - side) / 2)), int(round((left + right - side) / 2)), side


def crop_square(pixels: np.ndarray, box: tuple[int, int, int], fill: int = 0) -> np.ndarray:
    """The ``(top, left, side)`` square of ``pixels``; what lies past the canvas is ``fill``."""
    top, left, side = box
    out = np.full((side, side), fill, dtype=pixels.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, pixels.shape[0]), min(left + side, pixels.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = pixels[y0:y1, x0:x1]
    return out


def percentile_stretch(pixels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map the ``INTENSITY_PERCENTILES`` of ``reference`` (the head's pixels) linearly to 0 and 255, clipped."""
    low, high = np.percentile(reference, INTENSITY_PERCENTILES)
    if high <= low:
        return pixels
    scaled = (pixels.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def input_box(pixels: np.ndarray, spec: InputConfig = NO_INPUT) -> tuple[int, int, int] | None:
    """The square ``normalise_input`` crops ``pixels`` to, or None when it does not crop (``crop: none`` or no head
    found)."""
    if spec.crop == "none":
        return None
    mask = head_mask(pixels)
    return head_box(mask) if mask is not None else None


def normalise_input(pixels: np.ndarray, spec: InputConfig = NO_INPUT) -> np.ndarray:
    """Crop to the head and normalise intensity as ``spec`` says, at the image's own resolution.

    With both switches ``none`` the very same array comes back, so the
    default path is the preprocessing of before. An image where no head is
    found (flat) is left uncropped and unstretched.
    """
    if spec == NO_INPUT:
        return pixels
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got {pixels.dtype} {pixels.shape}")
    mask = head_mask(pixels)
    if mask is None:
        return pixels
    if spec.intensity == "percentile":
        pixels = percentile_stretch(pixels, pixels[mask])
    if spec.crop == "head":
        pixels = crop_square(pixels, head_box(mask))
    return pixels


def prepare_grey(pixels: np.ndarray, image_size: int, spec: InputConfig = NO_INPUT) -> np.ndarray:
    """``normalise_input`` then ``resize_grey``: the uint8 ``[S, S]`` image the model's input is made of."""
    return resize_grey(normalise_input(pixels, spec), image_size)


def to_model_input(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """Stack 8-bit grey images (already through ``normalise_input``) into a float batch ``[N, 1, S, S]`` in [0, 1]."""
    batch = np.stack([resize_grey(image, image_size) for image in images])
    return uint8_batch_to_float(torch.from_numpy(batch).unsqueeze(1))


def uint8_batch_to_float(batch: torch.Tensor) -> torch.Tensor:
    """``[N, 1, S, S]`` uint8 → float in [0, 1]; the cache stores uint8 and converts per batch."""
    return batch.float().div_(255.0)
