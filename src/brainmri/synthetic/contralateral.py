"""Tumour-free slices made from tumour slices: the tumour's box replaced by the mirror-image tissue of the
other hemisphere.

Why: figshare is the only contrast-enhanced T1 source, and every slice of it is a tumour; the tumour-free
images come from other sources and mostly other sequences. A classifier then learns "T1-CE look → tumour",
and calls tumour-free T1-CE slices of any other hospital tumours (the README's TCGA rows). Axial and coronal
slices are nearly left-right symmetric, so where a tumour lies on one side of the midline, the same region
on the other side shows what the tumour's side looked like without it. Pasting it over the tumour's box
gives a T1-CE slice of the same scan without the tumour: a tumour-free example of the look the model must
stop reading as "tumour".

``heal`` does that, or says why it cannot (no head, a tumour across the midline, a slice that is not
left-right symmetric: sagittal planes, tilted heads). The evaluate stage uses it as a *tumour-removal test*:
a model that reads the tumour calls a healed slice tumour-free; one that reads the look of the source keeps
calling it a tumour. ``sham`` pastes a region of the same size away from the tumour the same way, so a tumour
slice carries the same kind of seam (the generalisation ablation trains on both, so a seam tells nothing
about the class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from brainmri.core.preprocess import head_mask

SEARCH_SIDE = 128
"""The midline is searched on a copy reduced to about this side (fast; a 512-px slice gives a 4-px step)."""

MIDLINE_RANGE = 0.15
"""The midline is looked for within this fraction of the head's width either side of the head's centre."""

MIN_SYMMETRY = 0.4
"""Pearson correlation of the smoothed head with its mirror image (tumour boxes left out) below which a slice
is not taken for left-right symmetric."""

MIN_OUTLINE = 0.9
"""Intersection over union of the head's outline with its mirror image below which a slice is not taken for
left-right symmetric. The outline separates the planes better than the tissue does: a sagittal slice's face
and neck make its outline lopsided, while its tissue can correlate with its mirror as well as a tilted axial
slice's (set by looking at figshare train slices sorted by it)."""

SMOOTHING = 1.5
"""Gaussian sigma (reduced pixels) applied before correlating: noise and fine sulci differ between the sides
of any real head; the layout of ventricles, grey and white matter does not."""

BOX_MARGIN = 0.25
"""The tumour box grows by this fraction of its size on every side (and ``BOX_PAD`` pixels): the YOLO box is
drawn tight around the enhancing mass, and oedema reaches past it."""

BOX_PAD = 4

FEATHER = 0.15
"""The paste fades in over this fraction of the pasted box's shorter side, so its edge is not a hard line."""

MIN_HEAD_COVER = 0.8
"""Fraction of the mirror box that must lie inside the head: mirroring from outside the head pastes air."""


HEALED = "healed"
"""The reason of a Result that holds a healed image."""


@dataclass(frozen=True)
class Result:
    """A pasted image, or None and the reason none was made; ``symmetry`` is the mirror correlation."""

    image: np.ndarray | None
    reason: str
    symmetry: float = float("nan")


def box_of_mask(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The YOLO box ``(cx, cy, w, h)``, normalised to the mask's shape, around a boolean mask's pixels; None if
    it has none."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    return ((left + right) / 2 / width, (top + bottom) / 2 / height, (right - left) / width, (bottom - top) / height)


def _box_pixels(box: tuple[float, float, float, float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a YOLO box ``(cx, cy, w, h)`` grown by the margins, clipped."""
    cx, cy, w, h = box
    height, width = shape
    half_w = w * width * (0.5 + BOX_MARGIN) + BOX_PAD
    half_h = h * height * (0.5 + BOX_MARGIN) + BOX_PAD
    left, right = int(np.floor(cx * width - half_w)), int(np.ceil(cx * width + half_w))
    top, bottom = int(np.floor(cy * height - half_h)), int(np.ceil(cy * height + half_h))
    return max(top, 0), min(bottom, height), max(left, 0), min(right, width)


def mirror(pixels: np.ndarray, axis2: int) -> np.ndarray:
    """``pixels`` mirrored about the vertical line at column ``axis2 / 2``; columns mirrored from outside are 0."""
    width = pixels.shape[1]
    source = axis2 - np.arange(width)
    inside = (source >= 0) & (source < width)
    out = np.zeros_like(pixels)
    out[:, inside] = pixels[:, source[inside]]
    return out


def find_midline(pixels: np.ndarray, head: np.ndarray, exclude: np.ndarray) -> tuple[int, float]:
    """``(axis2, correlation)``: twice the column of the vertical mirror line that best maps the head onto
    itself, outside ``exclude``, and the correlation there (searched on a reduced copy)."""
    factor = max(1, round(max(pixels.shape) / SEARCH_SIDE))
    small = np.asarray(Image.fromarray(pixels).reduce(factor), dtype=np.float64) if factor > 1 else pixels * 1.0
    small = ndimage.gaussian_filter(small, SMOOTHING)
    shape = small.shape[::-1]
    small_head = np.asarray(Image.fromarray(head.astype(np.uint8)).resize(shape, Image.Resampling.NEAREST)) > 0
    small_keep = small_head & ~(
        np.asarray(Image.fromarray(exclude.astype(np.uint8)).resize(shape, Image.Resampling.NEAREST)) > 0
    )
    columns = np.flatnonzero(small_head.any(axis=0))
    centre2, span = columns[0] + columns[-1], columns[-1] - columns[0]
    reach = max(1, int(round(MIDLINE_RANGE * span)))
    best = (centre2, -1.0)
    for axis2 in range(centre2 - 2 * reach, centre2 + 2 * reach + 1):
        both = small_keep & mirror(small_keep, axis2)
        if both.sum() < 0.3 * small_keep.sum():
            continue
        a, b = small[both], mirror(small, axis2)[both]
        if a.std() == 0 or b.std() == 0:
            continue
        correlation = float(np.corrcoef(a, b)[0, 1])
        if correlation > best[1]:
            best = (axis2, correlation)
    return best[0] * factor + (factor - 1), best[1]


def _paste(pixels: np.ndarray, mirrored: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """``pixels`` with ``mirrored`` blended in over ``region``, faded in at the edge."""
    top, bottom, left, right = region
    alpha = np.zeros(pixels.shape, dtype=np.float64)
    alpha[top:bottom, left:right] = 1.0
    sigma = FEATHER * min(bottom - top, right - left) / 2
    alpha = np.minimum(ndimage.gaussian_filter(alpha, sigma) * 2, 1.0) if sigma > 0 else alpha
    out = alpha * mirrored + (1 - alpha) * pixels
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _region_mask(shape: tuple[int, int], region: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    top, bottom, left, right = region
    mask[top:bottom, left:right] = True
    return mask


@dataclass(frozen=True)
class _Plan:
    head: np.ndarray
    region: tuple[int, int, int, int]
    axis2: int
    symmetry: float


def _plan(pixels: np.ndarray, box: tuple[float, float, float, float]) -> _Plan | Result:
    """Head, grown tumour region and midline, or a Result saying why the slice cannot be mirrored."""
    head = head_mask(pixels)
    if head is None or not head.any():
        return Result(None, "no head found")
    region = _box_pixels(box, pixels.shape)
    exclude = _region_mask(pixels.shape, region)
    columns = np.flatnonzero(head.any(axis=0))
    first_guess = int(columns[0] + columns[-1])
    axis2, symmetry = find_midline(pixels, head, exclude | mirror(exclude, first_guess))
    mirrored_head = mirror(head, axis2)
    outline = (mirrored_head & head).sum() / (mirrored_head | head).sum()
    if outline < MIN_OUTLINE:
        why = f"head outline not left-right symmetric (mirror overlap {outline:.2f} < {MIN_OUTLINE})"
        return Result(None, why, symmetry)
    if symmetry < MIN_SYMMETRY:
        return Result(None, f"not left-right symmetric (mirror correlation {symmetry:.2f} < {MIN_SYMMETRY})", symmetry)
    top, bottom, left, right = region
    if left * 2 < axis2 < right * 2:
        return Result(None, "tumour box crosses the midline", symmetry)
    return _Plan(head, region, axis2, symmetry)


def heal(pixels: np.ndarray, box: tuple[float, float, float, float]) -> Result:
    """The slice with its tumour box (grown by the margins) replaced by the mirrored other side."""
    plan = _plan(pixels, box)
    if isinstance(plan, Result):
        return plan
    head, region, axis2, symmetry = plan.head, plan.region, plan.axis2, plan.symmetry
    mirrored_region = _region_mask(pixels.shape, region)
    source = mirror(mirrored_region, axis2)
    if source.sum() == 0 or (source & head).sum() < MIN_HEAD_COVER * source.sum():
        return Result(None, "the mirror of the tumour box falls outside the head", symmetry)
    return Result(_paste(pixels, mirror(pixels, axis2), region), HEALED, symmetry)


def sham(pixels: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator) -> Result:
    """The slice with a region of the tumour box's size, clear of the tumour and its mirror, replaced by its
    own mirror image: the same kind of seam as ``heal`` leaves, on a slice that keeps its tumour."""
    plan = _plan(pixels, box)
    if isinstance(plan, Result):
        return plan
    head, region, axis2, symmetry = plan.head, plan.region, plan.axis2, plan.symmetry
    top, bottom, left, right = region
    height, width = bottom - top, right - left
    tumour = _region_mask(pixels.shape, region)
    taken = ndimage.binary_dilation(tumour | mirror(tumour, axis2), iterations=BOX_PAD)
    rows, columns = np.nonzero(head)
    for _ in range(50):
        k = rng.integers(len(rows))
        y0, x0 = int(rows[k]) - height // 2, int(columns[k]) - width // 2
        if y0 < 0 or x0 < 0 or y0 + height > pixels.shape[0] or x0 + width > pixels.shape[1]:
            continue
        candidate = (y0, y0 + height, x0, x0 + width)
        if x0 * 2 < axis2 < (x0 + width) * 2:
            continue
        patch = _region_mask(pixels.shape, candidate)
        source = mirror(patch, axis2)
        if (patch & taken).any() or (source & taken).any():
            continue
        if (patch & head).sum() < MIN_HEAD_COVER * patch.sum() or (source & head).sum() < MIN_HEAD_COVER * patch.sum():
            continue
        return Result(_paste(pixels, mirror(pixels, axis2), candidate), "sham", symmetry)
    return Result(None, "no place for a sham paste clear of the tumour", symmetry)
