"""Per-image fingerprints used to find duplicates: a perceptual hash and a small grey thumbnail.

The pHash finds candidate pairs cheaply (Hamming distance on packed bits); the
thumbnail confirms them at pixel level (Pearson correlation), because brain
slices look alike at hash resolution and a hash alone merges different slices.
Both are computed in one pass over the images, in parallel across cores.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm


@dataclass(frozen=True)
class Fingerprints:
    """Row ``i`` of each array describes ``image_ids[i]``."""

    image_ids: np.ndarray  # str
    hashes: np.ndarray  # uint64 [N, words]: pHash bits packed
    thumbs: np.ndarray  # float32 [N, thumb*thumb]: zero-mean, unit-norm grey thumbnails

    def save(self, path: Path) -> None:
        np.savez_compressed(path, image_ids=self.image_ids, hashes=self.hashes, thumbs=self.thumbs)

    @classmethod
    def load(cls, path: Path) -> "Fingerprints":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["image_ids"], data["hashes"], data["thumbs"])

    def subset(self, image_ids) -> "Fingerprints":
        index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        rows = np.array([index[i] for i in image_ids], dtype=np.int64)
        return Fingerprints(self.image_ids[rows], self.hashes[rows], self.thumbs[rows])


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean hash into little 64-bit words so Hamming distance is XOR + popcount."""
    flat = np.asarray(bits, dtype=bool).ravel()
    padded = np.zeros(-(-flat.size // 64) * 64, dtype=bool)
    padded[: flat.size] = flat
    return np.packbits(padded, bitorder="little").view(np.uint64)


def normalised_thumbnail(image: Image.Image, size: int) -> np.ndarray:
    """Grey ``size``x``size`` thumbnail, zero mean and unit norm, so a dot product is a correlation."""
    thumb = np.asarray(image.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.float32).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return thumb / norm if norm > 0 else thumb


def _fingerprint(args: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    path, hash_size, thumb_size = args
    with Image.open(path) as image:
        image = image.convert("L")
        bits = imagehash.phash(image, hash_size=hash_size).hash
        return pack_bits(bits), normalised_thumbnail(image, thumb_size)


def compute_fingerprints(
    image_ids: list[str], paths: list[str], hash_size: int, thumb_size: int, workers: int | None = None
) -> Fingerprints:
    """Fingerprint every image; ``workers`` processes (default: all cores), order preserved."""
    workers = workers or os.cpu_count() or 1
    jobs = [(str(path), hash_size, thumb_size) for path in paths]
    words = -(-hash_size * hash_size // 64)
    if workers == 1 or len(jobs) < 64:
        results = list(tqdm(map(_fingerprint, jobs), total=len(jobs), desc="fingerprints", unit="img", leave=False))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            mapped = pool.map(_fingerprint, jobs, chunksize=32)
            results = list(tqdm(mapped, total=len(jobs), desc="fingerprints", unit="img", leave=False))
    hashes = np.stack([packed for packed, _ in results]) if results else np.zeros((0, words), dtype=np.uint64)
    thumbs = np.stack([thumb for _, thumb in results]) if results else np.zeros((0, thumb_size**2), dtype=np.float32)
    return Fingerprints(np.asarray(image_ids, dtype=str), hashes, thumbs)


def hamming_pairs(hashes: np.ndarray, max_distance: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming distance ``<= max_distance``, by blocked vectorised popcount.

    Memory stays at ``block * N`` distances; no Python loop over pairs.
    """
    n = len(hashes)
    rows, cols, dists = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        xor = hashes[start:stop, None, :] ^ hashes[None, start:, :]
        distance = np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
        i, j = np.nonzero(distance <= max_distance)
        j = j + start
        i = i + start
        upper = j > i
        rows.append(i[upper])
        cols.append(j[upper])
        dists.append(distance[i[upper] - start, j[upper] - start])
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.int32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)


def confirmed_pairs(
    fingerprints: Fingerprints, max_hamming: int, min_correlation: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs by pHash, kept where the thumbnails correlate at least ``min_correlation``.

    Returns ``(i, j, hamming, correlation)`` arrays of the confirmed pairs.
    """
    i, j, hamming = hamming_pairs(fingerprints.hashes, max_hamming)
    correlation = np.einsum("ij,ij->i", fingerprints.thumbs[i], fingerprints.thumbs[j]) if len(i) else np.zeros(0)
    keep = correlation >= min_correlation
    return i[keep], j[keep], hamming[keep], correlation[keep].astype(np.float32)
