"""Per-image fingerprints used to find duplicates, and the index that pairs them.

Each image gets two fingerprints, computed in one pass and in parallel across cores:

- a 64-bit (``hash_size`` 8) **pHash**, used only to find *candidate* pairs
  cheaply: Hamming distance on packed bits, searched with an index
  (``hamming_pairs``) instead of comparing all pairs;
- a small grey **thumbnail** (zero mean, unit norm), which *confirms* a
  candidate at pixel level by Pearson correlation, because brain slices look
  alike at hash resolution and a hash alone merges different slices.

Both are taken from the image's **core frame**, not from the whole canvas
(``frame_spread``; ``None`` means the whole canvas). The frame is found from
the intensity profiles of the image (``core_frame``): per axis, the window
``median ± frame_spread * IQR`` of where the bright mass lies, i.e. the middle
of the head, wherever it sits on the canvas and however the canvas was
stretched. Two things follow, both measured by ``benchmarks/dedup_threshold_study.py``:

- copies that were cropped by a few per cent, padded, squashed to a square or
  moved keep nearly the same frame, so their fingerprints stay close (on the
  whole canvas a 5% crop shifts every structure and most such copies are lost);
- the skull outline and scalp, which every slice of every head shares, are
  left out, so neighbouring slices of one scan, whose outlines match but whose
  insides differ, correlate far less than copies do. That gap is what lets
  one correlation threshold keep copies together and neighbours apart.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import imagehash
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

FRAME_PROFILE_SIDE = 128
"""The frame is measured on a copy reduced to about this side, which is fast and smooths noise."""

FRAME_LEVELS = (5, 99, 0.1)
"""``(low percentile, high percentile, fraction)``: mass is intensity above ``low + fraction * (high -
low)``. Relative to the image's own levels, so brightness and contrast changes and a grey (not black)
background do not move the frame; the 10% floor keeps faint haze and noise, spread over the large
background, from outweighing the head."""

INDEX_MAX_CHUNK_BITS = 24
"""Longest substring the index keys a dense lookup table with (2**24 int32 entries: 64 MiB)."""

INDEX_MAX_PROBE_RADIUS = 2
"""Largest Hamming radius probed inside one substring (at most 1 + 24 + 276 probes per substring)."""


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


Frame = tuple[tuple[float, float, float, float], int]
"""A window ``(left, top, right, bottom)`` in pixels, possibly reaching past the canvas, and the grey
level to pad with outside the canvas."""


def core_frame(grey: Image.Image, spread: float) -> Frame:
    """The core frame of a grey image: per axis, ``median ± spread * (q75 - q25)`` of its mass profile
    (interpolated, so sub-pixel); padded with the background level (the low percentile of ``FRAME_LEVELS``).

    Quantiles, not moments: cutting a few per cent of content off the border moves a quantile by about
    that much, but the standard deviation by far more, because the cut mass sits at the longest lever.
    Not a thresholded bounding box either, which jumps by whole rows with JPEG noise.
    """
    factor = max(1, round(max(grey.size) / FRAME_PROFILE_SIDE))
    small = np.asarray(grey.reduce(factor) if factor > 1 else grey, dtype=np.float64)
    low_percentile, high_percentile, fraction = FRAME_LEVELS
    low, high = np.percentile(small, [low_percentile, high_percentile])
    mass = np.clip(small - (low + fraction * (high - low)), 0, None)
    total = mass.sum()
    if total <= 0:  # a flat image has no content to centre on
        return (0.0, 0.0, float(grey.width), float(grey.height)), round(low)
    frame = []
    for axis, scale in ((0, grey.width / small.shape[1]), (1, grey.height / small.shape[0])):
        cumulative = np.r_[0.0, np.cumsum(mass.sum(axis=axis)) / total]
        q25, median, q75 = np.interp([0.25, 0.5, 0.75], cumulative, np.arange(cumulative.size, dtype=np.float64))
        half = spread * max(q75 - q25, 1.0)
        frame.append(((median - half) * scale, (median + half) * scale))
    (left, right), (top, bottom) = frame
    return (left, top, right, bottom), round(low)


def framed(grey: Image.Image, size: int, frame: Frame | None, resample: Image.Resampling) -> Image.Image:
    """``grey`` resampled to ``size`` x ``size`` from ``frame`` (sub-pixel box), or from the whole canvas
    when ``frame`` is ``None``."""
    if frame is None:
        return grey.resize((size, size), resample)
    (left, top, right, bottom), background = frame
    pad = int(np.ceil(max(0.0, -left, -top, right - grey.width, bottom - grey.height)))
    if pad:
        grey = ImageOps.expand(grey, border=pad, fill=background)
    return grey.resize((size, size), resample, box=(left + pad, top + pad, right + pad, bottom + pad))


def phash_bits(grey: Image.Image, hash_size: int, frame: Frame | None) -> np.ndarray:
    """Packed pHash bits (``hash_size**2``) of ``frame`` of a grey image."""
    # imagehash.phash resizes to 4 * hash_size itself; handing it that size makes its resize a no-op
    window = framed(grey, 4 * hash_size, frame, Image.Resampling.LANCZOS)
    return pack_bits(imagehash.phash(window, hash_size=hash_size).hash)


def thumbnail(grey: Image.Image, thumb_size: int, frame: Frame | None) -> np.ndarray:
    """``thumb_size`` x ``thumb_size`` grey thumbnail of ``frame``, zero mean and unit norm, so a dot
    product is a correlation."""
    thumb = np.asarray(framed(grey, thumb_size, frame, Image.Resampling.BOX), dtype=np.float32).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return thumb / norm if norm > 0 else thumb


def fingerprint(
    image: Image.Image, hash_size: int, thumb_size: int, spread: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """pHash bits (packed) and normalised thumbnail of one image, both from its core frame of ``spread``
    (``None``: the whole image)."""
    grey = image.convert("L")
    frame = None if spread is None else core_frame(grey, spread)
    return phash_bits(grey, hash_size, frame), thumbnail(grey, thumb_size, frame)


def _fingerprint_path(args: tuple[str, int, int, float | None]) -> tuple[np.ndarray, np.ndarray]:
    path, hash_size, thumb_size, spread = args
    with Image.open(path) as image:
        return fingerprint(image, hash_size, thumb_size, spread)


def compute_fingerprints(
    image_ids: list[str],
    paths: list[str],
    hash_size: int,
    thumb_size: int,
    workers: int | None = None,
    *,
    frame_spread: float | None,
) -> Fingerprints:
    """Fingerprint every image from its core frame (``frame_spread``, required so that no caller
    silently fingerprints differently from the dedup stage; ``None``: the whole image); ``workers``
    processes (default: all cores), order preserved."""
    workers = workers or os.cpu_count() or 1
    jobs = [(str(path), hash_size, thumb_size, frame_spread) for path in paths]
    words = -(-hash_size * hash_size // 64)
    if workers == 1 or len(jobs) < 64:
        results = list(
            tqdm(map(_fingerprint_path, jobs), total=len(jobs), desc="fingerprints", unit="img", leave=False)
        )
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            mapped = pool.map(_fingerprint_path, jobs, chunksize=32)
            results = list(tqdm(mapped, total=len(jobs), desc="fingerprints", unit="img", leave=False))
    hashes = np.stack([packed for packed, _ in results]) if results else np.zeros((0, words), dtype=np.uint64)
    thumbs = np.stack([thumb for _, thumb in results]) if results else np.zeros((0, thumb_size**2), dtype=np.float32)
    return Fingerprints(np.asarray(image_ids, dtype=str), hashes, thumbs)


# --- the pair search -------------------------------------------------------------------------------


def _empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, np.zeros(0, dtype=np.int32)


def hamming_pairs_scan(
    hashes: np.ndarray, max_distance: int, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming distance ``<= max_distance`` by comparing every pair (blocked,
    vectorised popcount). O(N^2): the reference ``hamming_pairs`` is tested and benchmarked against."""
    n = len(hashes)
    rows, cols, dists = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        distance = np.bitwise_count(hashes[start:stop, None, :] ^ hashes[None, start:, :]).sum(axis=2, dtype=np.int32)
        i, j = np.nonzero(distance <= max_distance)
        upper = j > i
        rows.append(i[upper] + start)
        cols.append(j[upper] + start)
        dists.append(distance[i[upper], j[upper]])
    if not rows:
        return _empty_pairs()
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)


def _chunk_plan(bits: int, max_distance: int) -> tuple[int, int]:
    """``(chunks, probe_radius)`` of the multi-index: pigeonhole says two hashes within ``max_distance``
    agree to within ``max_distance // chunks`` bits on at least one of ``chunks`` disjoint substrings."""
    chunks = max(-(-bits // INDEX_MAX_CHUNK_BITS), -(-(max_distance + 1) // (INDEX_MAX_PROBE_RADIUS + 1)))
    chunks = min(chunks, bits)
    return chunks, max_distance // chunks


def _cross_pairs(
    order: np.ndarray, starts: np.ndarray, counts: np.ndarray, left: np.ndarray, right: np.ndarray, batch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every (member of group ``left[k]``, member of group ``right[k]``) as row indices, in batches of
    about ``batch`` pairs, by repeat/arange arithmetic (no Python loop over pairs)."""
    sizes = counts[left] * counts[right]
    ends = np.cumsum(sizes)
    cut = 0
    while cut < len(left):
        stop = max(int(np.searchsorted(ends, (ends[cut - 1] if cut else 0) + batch, side="right")), cut + 1)
        g, h, s = left[cut:stop], right[cut:stop], sizes[cut:stop]
        owner = np.repeat(np.arange(len(s)), s)
        offset = np.arange(int(s.sum())) - np.repeat(np.cumsum(s) - s, s)
        width = counts[h][owner]
        yield order[starts[g][owner] + offset // width], order[starts[h][owner] + offset % width]
        cut = stop


def hamming_pairs(
    hashes: np.ndarray, max_distance: int, batch: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming distance ``<= max_distance``, sorted, with their distances.

    Multi-index hashing (Norouzi et al., 2012), exact: the bits that vary across the data are dealt
    round-robin into ``m`` substrings of at most 24 bits, with ``m`` chosen so that a pair within
    ``max_distance`` is within ``p = max_distance // m <= 2`` bits on at least one substring. Per
    substring, the distinct keys are put in a dense lookup table and every key is probed with each
    flip pattern of up to ``p`` bits, which yields the candidate groups; candidates are verified
    with a vectorised XOR + popcount over the whole hash, and a pair is reported only by the first
    substring that finds it. Work grows with the number of candidates, not with N^2: for 64-bit
    hashes at radius 8 (3 substrings of ~21 bits) a million hashes take seconds, where the all-pairs
    scan (``hamming_pairs_scan``) would compare 5e11 pairs.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        return _empty_pairs()
    unpacked = np.unpackbits(hashes.view(np.uint8), axis=1, bitorder="little")
    varying = np.flatnonzero(unpacked.min(axis=0) != unpacked.max(axis=0))  # constant bits never differ
    if len(varying) == 0:  # all hashes equal: every pair, at distance 0
        i, j = np.triu_indices(n, k=1)
        return i.astype(np.int64), j.astype(np.int64), np.zeros(len(i), dtype=np.int32)
    chunks, probe = _chunk_plan(len(varying), max_distance)
    positions = [varying[c::chunks] for c in range(chunks)]
    word_masks = []  # the bits of each substring, as masks over the packed words
    for pos in positions:
        mask = np.zeros(unpacked.shape[1], dtype=bool)
        mask[pos] = True
        word_masks.append(pack_bits(mask))
    found_i, found_j, found_d = [], [], []
    for c, pos in enumerate(positions):
        keys = np.packbits(unpacked[:, pos], axis=1, bitorder="little")
        keys = np.ascontiguousarray(np.pad(keys, ((0, 0), (0, 4 - keys.shape[1])))).view("<u4").ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        first = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        unique, counts = sorted_keys[first], np.diff(np.r_[first, n])
        table = np.full(1 << len(pos), -1, dtype=np.int32)
        table[unique] = np.arange(len(unique), dtype=np.int32)
        groups = np.arange(len(unique))
        for flips in range(probe + 1):
            for flipped in itertools.combinations(range(len(pos)), flips):
                if flips == 0:
                    left = groups[counts > 1]
                    right = left
                else:
                    partner = table[unique ^ np.uint32(sum(1 << b for b in flipped))]
                    left = groups[partner > groups]  # each unordered group pair once
                    right = partner[left]
                for a, b in _cross_pairs(order, first, counts, left, right, batch):
                    if flips == 0:
                        a, b = a[a < b], b[a < b]
                    xor = hashes[a] ^ hashes[b]
                    distance = np.bitwise_count(xor).sum(axis=1, dtype=np.int32)
                    keep = distance <= max_distance
                    for earlier in word_masks[:c]:  # already reported by an earlier substring
                        keep &= np.bitwise_count(xor & earlier).sum(axis=1) > probe
                    found_i.append(np.minimum(a[keep], b[keep]))
                    found_j.append(np.maximum(a[keep], b[keep]))
                    found_d.append(distance[keep])
    if not found_i:
        return _empty_pairs()
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), d[order]


def confirmed_pairs(
    fingerprints: Fingerprints, max_hamming: int, min_correlation: float, batch: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs by pHash, kept where the thumbnails correlate at least ``min_correlation``.

    Returns ``(i, j, hamming, correlation)`` arrays of the confirmed pairs. Correlations are computed
    ``batch`` candidates at a time, so memory stays bounded however many candidates there are.
    """
    i, j, hamming = hamming_pairs(fingerprints.hashes, max_hamming)
    thumbs = fingerprints.thumbs
    correlation = np.concatenate(
        [np.einsum("ij,ij->i", thumbs[i[k : k + batch]], thumbs[j[k : k + batch]]) for k in range(0, len(i), batch)]
        or [np.zeros(0, dtype=np.float32)]
    )
    keep = correlation >= min_correlation
    return i[keep], j[keep], hamming[keep], correlation[keep].astype(np.float32)
