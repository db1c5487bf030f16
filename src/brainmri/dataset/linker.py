"""Same-patient links for images without a patient id, and same-picture links across everything.

Sources such as the SARTAJ-derived Kaggle images and Br35H carry no patient
id, yet hold several slices of one patient; neighbouring slices are nearly the
same picture and leak anatomy across an image-level split. The linker joins
each image to its *nearest neighbour* among the images of its own source and
label (whole-image grey thumbnails, Pearson correlation) when they correlate
at ``split.linker_correlation`` or more.

Why nearest neighbours and not every pair above a threshold: slices of one
plane look alike across patients, so a global threshold high enough to be
precise links almost nothing, while an image's single most similar image is
usually its neighbouring slice. The threshold and the thumbnail size are
chosen and measured on the figshare images, whose patients are known
(``benchmarks/calibrate_linker.py`` → ``metrics/linker_calibration.json``):
chosen on half of the patients, measured on the other half.

The same thumbnails also find *same pictures* that dedup's core-frame
fingerprint misses (a re-framed copy at another size): any two kept images
correlating at ``split.same_picture_correlation`` stay together, whatever
their source or label.

The search is exact (every pair is compared), in blocks, so memory stays flat:
7,000 images at 32x32 are about 50 M dot products of 1,024 values, seconds on
two cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

THUMB_SIZE = 32
"""Side of the whole-image grey thumbnail the links compare (what the leakage issue measured its pairs with)."""


def thumbnail_vector(pixels: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """A ``size``² vector of the image, area-resized, centred and scaled to unit norm: dot product = correlation."""
    small = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BOX), dtype=np.float32).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def thumbnail_vectors(paths: Sequence[str], size: int = THUMB_SIZE) -> np.ndarray:
    """``thumbnail_vector`` of each grey image file, as one ``(n, size²)`` float32 array."""
    vectors = np.zeros((len(paths), size * size), dtype=np.float32)
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            vectors[row] = thumbnail_vector(np.asarray(image.convert("L")), size)
    return vectors


def correlated_pairs(
    vectors: np.ndarray, min_correlation: float, cells: np.ndarray | None = None, block: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` whose vectors' dot product is at least ``min_correlation``: ``(i, j, correlation)``.

    With ``cells`` (one key per row), only pairs inside one cell are compared
    (the linker's "same source and label").
    """
    n = len(vectors)
    found_i, found_j, found_c = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        scores = vectors[start:stop] @ vectors[start:].T
        rows, cols = np.nonzero(scores >= min_correlation)
        cols = cols + start
        keep = cols > rows + start
        if cells is not None:
            keep &= cells[rows + start] == cells[cols]
        found_i.append(rows[keep] + start)
        found_j.append(cols[keep])
        found_c.append(scores[rows[keep], cols[keep] - start])
    if not found_i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_c).astype(np.float32),
    )


def nearest_neighbour_pairs(
    vectors: np.ndarray, min_correlation: float, cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's most correlated other row of the same cell, where that correlation is at least ``min_correlation``.

    Returns ``(i, j, correlation)`` with ``i < j``, each pair once (two rows
    that are each other's nearest neighbour give one pair).
    """
    found: dict[tuple[int, int], float] = {}
    for cell in np.unique(cells):
        rows = np.flatnonzero(cells == cell)
        if len(rows) < 2:
            continue
        scores = vectors[rows] @ vectors[rows].T
        np.fill_diagonal(scores, -np.inf)
        nearest = scores.argmax(axis=1)
        best = scores[np.arange(len(rows)), nearest]
        for a, b, c in zip(rows, rows[nearest], best, strict=True):
            if c >= min_correlation:
                found.setdefault((int(min(a, b)), int(max(a, b))), float(c))
    pairs = sorted(found)
    return (
        np.array([i for i, _ in pairs], dtype=np.int64),
        np.array([j for _, j in pairs], dtype=np.int64),
        np.array([found[p] for p in pairs], dtype=np.float32),
    )
