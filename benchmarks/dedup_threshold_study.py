"""The dedup threshold study (research code of benchmarks/calibrate_dedup.py, not a pipeline stage): precision and
recall of the duplicate decision ``hamming <= H and correlation >= C``.

The dedup thresholds are chosen by measurement, not by feel. A calibration set
is built from real images (read straight from the source archives):

- **positives**: an image and a copy made by a known transform of it
  (``FAMILIES``: resizing, JPEG re-encoding at quality 50-95, a grey→RGB JPEG
  round trip, a small brightness/contrast change, a 2-5% crop resized back,
  and combinations), i.e. what redistributors do to a slice;
- **negatives**: two images that are *not* copies. Copies hide everywhere in
  the real data (the sources overlap, and the combined Kaggle set repeats
  itself), so negatives are taken where that is known not to happen: inside
  the figshare set of Cheng et al. (one slice per file, 233 patients), as
  *adjacent* slices (consecutive file numbers of one class are usually
  neighbouring slices of one patient's scan, the hardest honest negative;
  all of them are used),
  *look-alikes* (each image's nearest same-class neighbours by thumbnail
  correlation) and *random* pairs; plus random pairs of *different classes*
  inside the Kaggle set (same-class random pairs there turned out to include
  contrast-changed copies of one slice; a copy with another label is rare).
  The hardest negatives are reported by name so they can be checked by eye
  (those checked were distinct neighbouring slices, not copies).

Every image of the set is fingerprinted once per setting (frame, hash size,
thumbnail size) with the same functions the dedup stage uses
(``brainmri.dataset.fingerprints``); the decision is then swept over a grid of Hamming
and correlation thresholds (``sweep``), and the setting that clears the
precision and recall targets by the widest margin, at a radius the pair index
searches fast, is picked (``choose``). ``benchmarks/calibrate_dedup.py``
chooses on one half of the figshare patients and measures the choice on the
other half (``build_pairs(half=...)``), and writes the table.
"""

from __future__ import annotations

import functools
import io
import os
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from brainmri.config import DedupConfig, MergeConfig
from brainmri.core.imaging import IMAGE_SUFFIXES, BadImage, decode_image, pixel_sha256
from brainmri.dataset.dedup import cluster_ids, duplicate_pairs
from brainmri.dataset.fingerprints import Fingerprints, core_frame, phash_bits, thumbnail

FAMILIES = ("resize", "jpeg", "rgb", "intensity", "crop", "combo")
"""The transform families of the positives; ``transform`` documents each one's parameter ranges."""


# --- known-duplicate transforms -------------------------------------------------------------------


def _jpeg(image: Image.Image, quality: int, mode: str = "L") -> Image.Image:
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, "JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("L")


def _resize(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    width, height = image.size
    method = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS][rng.integers(3)]
    if rng.random() < 0.5:  # down-sampled and back up: the detail is lost, the size is not
        factor = rng.uniform(0.35, 0.8)
        small = image.resize((max(8, round(width * factor)), max(8, round(height * factor))), method)
        return small.resize((width, height), method), f"down x{factor:.2f} and up"
    fx = rng.uniform(0.35, 0.9)
    fy = fx if rng.random() < 0.5 else rng.uniform(0.35, 0.9)  # redistributors also squash to a square
    return image.resize((max(8, round(width * fx)), max(8, round(height * fy))), method), f"down x{fx:.2f},x{fy:.2f}"


def _intensity(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    brightness, contrast = rng.uniform(0.9, 1.1, 2)
    changed = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness)).enhance(contrast)
    return changed, f"brightness x{brightness:.2f} contrast x{contrast:.2f}"


def _crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    width, height = image.size
    fx, fy = rng.uniform(0.02, 0.05, 2)  # fraction of each side removed, split at random between its two ends
    sx, sy = rng.uniform(0, 1, 2)
    box = (width * fx * sx, height * fy * sy, width * (1 - fx * (1 - sx)), height * (1 - fy * (1 - sy)))
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box), f"crop {fx:.1%}x{fy:.1%} resized back"


def transform(image: Image.Image, family: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A known copy of a grey image, and what was done to it.

    - ``resize``: down to 35-90% per side (half the time to another aspect ratio), or down to 35-80%
      and back up; bilinear, bicubic or Lanczos;
    - ``jpeg``: re-encoded at quality 50-95;
    - ``rgb``: converted to RGB, saved as JPEG at quality 70-95 (colour subsampling) and back to grey;
    - ``intensity``: brightness and contrast each scaled by 0.9-1.1;
    - ``crop``: 2-5% of each side cut (split at random between its two ends), resized back;
    - ``combo``: two or three of resize, intensity and crop in random order, then JPEG (grey or RGB)
      at quality 60-95.
    """
    if family == "resize":
        return _resize(image, rng)
    if family == "jpeg":
        quality = int(rng.integers(50, 96))
        return _jpeg(image, quality), f"jpeg q{quality}"
    if family == "rgb":
        quality = int(rng.integers(70, 96))
        return _jpeg(image, quality, "RGB"), f"rgb jpeg q{quality}"
    if family == "intensity":
        return _intensity(image, rng)
    if family == "crop":
        return _crop(image, rng)
    if family == "combo":
        steps = [_resize, _intensity, _crop]
        chosen = rng.permutation(len(steps))[: rng.integers(2, 4)]
        notes = []
        for step in chosen:
            image, note = steps[step](image, rng)
            notes.append(note)
        quality, mode = int(rng.integers(60, 96)), ("L", "RGB")[rng.integers(2)]
        return _jpeg(image, quality, mode), " → ".join(notes + [f"{mode} jpeg q{quality}"])
    raise ValueError(f"unknown transform family {family!r} (known: {', '.join(FAMILIES)})")


# --- images in archives ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """One image of the calibration set: an archive member as stored, or a seeded transform of it."""

    archive: str
    member: str
    family: str = ""
    seed: int = 0


def image_members(archive: Path) -> list[str]:
    """The image members of a zip archive, sorted; like the merge stage, none in hidden folders
    (the Kaggle zip holds a Jupyter ``.ipynb_checkpoints`` copy)."""
    with zipfile.ZipFile(archive) as zipped:
        return sorted(
            n
            for n in zipped.namelist()
            if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES
            and not any(p.startswith(".") for p in PurePosixPath(n).parts)
        )


@functools.lru_cache(maxsize=8)
def _open_zip(archive: str, pid: int) -> zipfile.ZipFile:
    """One open archive per process (``pid``): a forked worker must not share its parent's file offset."""
    return zipfile.ZipFile(archive)


def read_grey(archive: str, member: str) -> Image.Image:
    """Decode an archive member to 8-bit grey exactly as the merge stage does (``brainmri.core.imaging``)."""
    return Image.fromarray(decode_image(_open_zip(archive, os.getpid()).read(member), member, MergeConfig()))


def render(ref: ImageRef, original: Image.Image) -> Image.Image:
    """The image ``ref`` names, given its decoded original."""
    return transform(original, ref.family, np.random.default_rng(ref.seed))[0] if ref.family else original


@dataclass(frozen=True)
class Setting:
    """What a fingerprint is taken from (``spread``: the core frame's, ``None``: the whole image) and its
    sizes; the thresholds are swept separately."""

    spread: float | None
    hash_size: int
    thumb_size: int

    @property
    def frame(self) -> str:
        """A label for tables: ``core <spread>`` or ``image``."""
        return "image" if self.spread is None else f"core {self.spread:g}"


def frame_spread(label: str) -> float | None:
    """The ``frame_spread`` a ``Setting.frame`` label stands for."""
    return None if label == "image" else float(label.removeprefix("core "))


def _fingerprint_group(job: tuple[list[ImageRef], list[Setting]]) -> list[tuple[ImageRef, dict]]:
    refs, settings = job
    try:
        original = read_grey(refs[0].archive, refs[0].member)
    except BadImage:
        return []
    out = []
    for ref in refs:
        grey = render(ref, original)
        prints = {"sha256": pixel_sha256(np.asarray(grey))}
        for spread in {s.spread for s in settings}:
            frame = None if spread is None else core_frame(grey, spread)
            for hash_size in {s.hash_size for s in settings if s.spread == spread}:
                prints["hash", spread, hash_size] = phash_bits(grey, hash_size, frame)
            for thumb_size in {s.thumb_size for s in settings if s.spread == spread}:
                prints["thumb", spread, thumb_size] = thumbnail(grey, thumb_size, frame)
        out.append((ref, prints))
    return out


def fingerprint_refs(refs: list[ImageRef], settings: list[Setting], workers: int | None = None) -> dict[ImageRef, dict]:
    """Fingerprints of every ref for every setting, keyed ``("hash", spread, hash_size)`` and
    ``("thumb", spread, thumb_size)``, and the pixel hash (``"sha256"``); each original is decoded once, in
    ``workers`` processes. Refs whose original cannot be decoded are left out."""
    groups: dict[tuple[str, str], list[ImageRef]] = {}
    for ref in dict.fromkeys(refs):
        groups.setdefault((ref.archive, ref.member), []).append(ref)
    jobs = [(group, settings) for group in groups.values()]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        results = map(_fingerprint_group, jobs)
        return {ref: prints for batch in results for ref, prints in batch}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return {ref: prints for batch in pool.map(_fingerprint_group, jobs, chunksize=8) for ref, prints in batch}


# --- the calibration set --------------------------------------------------------------------------


def figshare_number(member: str) -> tuple[str, int] | None:
    """``(class folder, file number)`` of a figshare member such as ``figshare-cheng2017/2/1867.jpg``."""
    match = re.search(r"/([^/]+)/(\d+)\.[^.]+$", member)
    return (match.group(1), int(match.group(2))) if match else None


def lookalike_pairs(
    thumbs: np.ndarray, classes: np.ndarray, queries: np.ndarray, k: int, exclude: set
) -> list[tuple[int, int]]:
    """For each row in ``queries``, its ``k`` most correlated other rows of the same class (not in
    ``exclude``, a set of ``(min, max)`` index pairs), as sorted ``(a, b)`` index pairs."""
    pairs = []
    for query in queries:
        correlation = thumbs @ thumbs[query]
        correlation[classes != classes[query]] = -np.inf
        correlation[query] = -np.inf
        taken = 0
        for other in np.argsort(-correlation, kind="stable"):
            if taken == k or not np.isfinite(correlation[other]):
                break
            pair = (min(query, other), max(query, other))
            if pair not in exclude:
                pairs.append(pair)
                exclude.add(pair)
                taken += 1
    return pairs


FIGSHARE_BLOCK = 100
"""figshare files are numbered patient by patient; blocks of this many numbers split the set into two
halves (even and odd blocks) that share (almost) no patient, for a calibration and a held-out set."""


def build_pairs(
    figshare: Path,
    kaggle: Path,
    n_figshare: int,
    n_kaggle: int,
    seed: int,
    spreads: tuple[float | None, ...] = (None,),
    lookalikes: int = 2,
    random_pairs: int = 1000,
    workers: int | None = None,
    half: int | None = None,
    exclude: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """The calibration pairs: columns ``a``, ``b`` (``ImageRef``), ``duplicate`` (bool), ``kind``
    (a transform family for positives; ``adjacent``, ``lookalike``, ``random`` for negatives).

    ``n_figshare`` + ``n_kaggle`` originals, sampled with ``seed``, each get one copy per family in
    ``FAMILIES`` (two for ``combo``). Negatives: *every* pair of consecutive figshare numbers in one
    class folder (neighbouring slices are the false merges real data produces most, so all of them
    are counted, not a sample); each figshare original's ``lookalikes`` nearest same-class neighbours
    by 32x32 thumbnail correlation under each of ``spreads`` (a core frame's spread, or ``None``: the
    whole image), so they are hard for every setting measured; ``random_pairs`` random figshare pairs
    and as many random Kaggle pairs of different classes.

    Held-out sets: with ``half`` 0 or 1 only the figshare files of even or odd ``FIGSHARE_BLOCK``s are
    used (for originals and negatives alike), and Kaggle members in ``exclude`` are neither originals
    nor in random pairs.
    """
    rng = np.random.default_rng(seed)
    fig_members = [
        m
        for m in image_members(figshare)
        if figshare_number(m) and (half is None or figshare_number(m)[1] // FIGSHARE_BLOCK % 2 == half)
    ]
    kag_members = [m for m in image_members(kaggle) if m not in exclude]
    fig_bases = sorted(rng.choice(len(fig_members), n_figshare, replace=False).tolist())
    kag_bases = sorted(rng.choice(len(kag_members), n_kaggle, replace=False).tolist())

    rows = []
    bases = [(str(figshare), fig_members[i]) for i in fig_bases] + [(str(kaggle), kag_members[i]) for i in kag_bases]
    for b, (archive, member) in enumerate(bases):
        original = ImageRef(archive, member)
        for v, family in enumerate(FAMILIES + ("combo",)):
            rows.append((original, ImageRef(archive, member, family, seed * 1_000_003 + b * 31 + v), True, family))

    fig_refs = [ImageRef(str(figshare), m) for m in fig_members]
    position = {figshare_number(m): i for i, m in enumerate(fig_members)}
    chosen: set[tuple[int, int]] = set()  # figshare negative pairs so far, so none is counted twice
    for (folder, number), i in sorted(position.items()):  # adjacent slices: consecutive numbers, one folder
        j = position.get((folder, number + 1))
        if j is not None:
            chosen.add((min(i, j), max(i, j)))
            rows.append((fig_refs[i], fig_refs[j], False, "adjacent"))

    classes = np.array([m.split("/")[-2] for m in fig_members])
    prints = fingerprint_refs(fig_refs, [Setting(spread, 8, 32) for spread in spreads], workers)
    for spread in spreads:
        thumbs = np.stack([prints[ref]["thumb", spread, 32] for ref in fig_refs])
        for a, b in lookalike_pairs(thumbs, classes, np.array(fig_bases), lookalikes, chosen):
            rows.append((fig_refs[a], fig_refs[b], False, "lookalike"))

    kag_classes = [m.split("/")[-2] for m in kag_members]
    for members, archive, taken in ((fig_members, figshare, chosen), (kag_members, kaggle, set())):
        drawn = 0
        while drawn < random_pairs:
            pair = tuple(sorted(rng.choice(len(members), 2, replace=False).tolist()))
            if pair in taken or (archive == kaggle and kag_classes[pair[0]] == kag_classes[pair[1]]):
                continue
            taken.add(pair)
            rows.append(
                (ImageRef(str(archive), members[pair[0]]), ImageRef(str(archive), members[pair[1]]), False, "random")
            )
            drawn += 1
    return pd.DataFrame(rows, columns=["a", "b", "duplicate", "kind"])


# --- scoring and choosing -------------------------------------------------------------------------


def pair_scores(pairs: pd.DataFrame, prints: dict[ImageRef, dict], settings: list[Setting]) -> pd.DataFrame:
    """One row per (pair, setting): the pair's ``hamming`` and ``correlation`` under that setting.
    Pairs with an undecodable image are dropped."""
    usable = pairs[pairs["a"].map(prints.__contains__) & pairs["b"].map(prints.__contains__)].reset_index(drop=True)
    frames = []
    for s in settings:
        hashes_a = np.stack([prints[r]["hash", s.spread, s.hash_size] for r in usable["a"]])
        hashes_b = np.stack([prints[r]["hash", s.spread, s.hash_size] for r in usable["b"]])
        thumbs_a = np.stack([prints[r]["thumb", s.spread, s.thumb_size] for r in usable["a"]])
        thumbs_b = np.stack([prints[r]["thumb", s.spread, s.thumb_size] for r in usable["b"]])
        frames.append(
            usable.assign(
                frame=s.frame,
                hash_size=s.hash_size,
                thumb_size=s.thumb_size,
                hamming=np.bitwise_count(hashes_a ^ hashes_b).sum(axis=1),
                correlation=np.einsum("ij,ij->i", thumbs_a, thumbs_b),
            )
        )
    return pd.concat(frames, ignore_index=True)


def sweep(scores: pd.DataFrame, hammings, correlations) -> pd.DataFrame:
    """Precision and recall of ``hamming <= H and correlation >= C`` for every setting and (H, C).

    ``scores`` has ``frame, hash_size, thumb_size, duplicate, hamming, correlation``. Precision is
    ``TP / (TP + FP)`` on this set (1.0 when nothing is called a duplicate); it depends on the set's
    mix of positives and negatives, so the false-positive counts are returned too.
    """
    hammings, correlations = np.asarray(hammings), np.asarray(correlations)
    rows = []
    for (frame, hash_size, thumb_size), group in scores.groupby(["frame", "hash_size", "thumb_size"], sort=True):
        near = group["hamming"].to_numpy()[None, None, :] <= hammings[:, None, None]
        alike = group["correlation"].to_numpy()[None, None, :] >= correlations[None, :, None]
        called = near & alike
        truth = group["duplicate"].to_numpy(dtype=bool)
        tp = (called & truth).sum(axis=2)
        fp = (called & ~truth).sum(axis=2)
        h, c = np.meshgrid(hammings, correlations, indexing="ij")
        rows.append(
            pd.DataFrame(
                {
                    "frame": frame,
                    "hash_size": hash_size,
                    "thumb_size": thumb_size,
                    "max_hamming": h.ravel(),
                    "min_correlation": c.ravel(),
                    "tp": tp.ravel(),
                    "fp": fp.ravel(),
                    "positives": int(truth.sum()),
                    "negatives": int((~truth).sum()),
                }
            )
        )
    table = pd.concat(rows, ignore_index=True)
    called = table["tp"] + table["fp"]
    table["precision"] = np.where(called > 0, table["tp"] / called.where(called > 0, 1), 1.0)
    table["recall"] = table["tp"] / table["positives"]
    return table


def index_radius_limit(hash_size: int) -> int:
    """The largest Hamming radius accepted for a hash size: one eighth of the bits. At that radius the
    index (``features.hamming_pairs``) probes at most 2 bits per substring; for 64 bits (radius 8) its
    1M-hash search is measured by ``benchmarks/bench_dedup.py``."""
    return hash_size * hash_size // 8


def choose(table: pd.DataFrame, min_precision: float, min_recall: float) -> pd.Series:
    """The row that clears both targets by the widest margin: the largest ``min(precision -
    min_precision, recall - min_recall)``, among radii the index searches fast (``index_radius_limit``);
    ties go to the smaller radius (fewer candidates) and then the higher correlation (the safer cut).

    Not "the most recall that still meets the precision target", which always sits on the precision
    edge of this particular set; the widest margin is the choice most likely to hold on new images.
    If no row meets both targets the closest one is returned (its margin is negative).
    """
    allowed = table[table["max_hamming"] <= table["hash_size"].map(index_radius_limit)]
    margin = np.minimum(allowed["precision"] - min_precision, allowed["recall"] - min_recall)
    ranked = allowed.assign(margin=margin).sort_values(
        ["margin", "max_hamming", "min_correlation"], ascending=[False, True, False], kind="stable"
    )
    return ranked.iloc[0]


def breakdown(scores: pd.DataFrame, row: pd.Series) -> dict:
    """Recall per transform family and false positives per negative kind at one chosen row."""
    group = scores[
        (scores["frame"] == row["frame"])
        & (scores["hash_size"] == row["hash_size"])
        & (scores["thumb_size"] == row["thumb_size"])
    ]
    called = (group["hamming"] <= row["max_hamming"]) & (group["correlation"] >= row["min_correlation"])
    out = {"recall_by_family": {}, "false_positives_by_kind": {}}
    for kind, rows in group.groupby("kind", sort=True):
        hits = int(called[rows.index].sum())
        if rows["duplicate"].iloc[0]:
            out["recall_by_family"][kind] = {"pairs": len(rows), "found": hits, "recall": round(hits / len(rows), 4)}
        else:
            out["false_positives_by_kind"][kind] = {
                "pairs": len(rows),
                "called_duplicate": hits,
                "rate": round(hits / len(rows), 4),
            }
    return out


# --- duplicates in the real archives --------------------------------------------------------------


def archive_duplicates(archives: dict[str, Path], cfg: DedupConfig, workers: int | None = None) -> dict:
    """Exact and near duplicates within and across whole archives, by the dedup stage's own rule
    (``brainmri.dataset.dedup.duplicate_pairs`` with ``cfg``), fingerprinting straight from the zips.

    Returns pair counts per archive pair, and per archive: images, images with a copy inside the same
    archive, images with a copy in another archive, and distinct images (duplicate clusters counted once).
    """
    setting = Setting(cfg.frame_spread, cfg.hash_size, cfg.thumb_size)
    refs = [ImageRef(str(path), member) for path in archives.values() for member in image_members(path)]
    prints = fingerprint_refs(refs, [setting], workers)
    names = {str(path): name for name, path in archives.items()}
    refs = [ref for ref in refs if ref in prints]
    manifest = pd.DataFrame(
        {
            "image_id": [f"{names[r.archive]}:{r.member}" for r in refs],
            "source": [names[r.archive] for r in refs],
            "sha256": [prints[r]["sha256"] for r in refs],
        }
    )
    fingerprints = Fingerprints(
        manifest["image_id"].to_numpy(dtype=str),
        np.stack([prints[r]["hash", setting.spread, setting.hash_size] for r in refs]),
        np.stack([prints[r]["thumb", setting.spread, setting.thumb_size] for r in refs]),
    )
    pairs = duplicate_pairs(manifest, fingerprints, cfg)
    source = manifest["source"].to_numpy()
    a, b = source[pairs["a"]], source[pairs["b"]]
    counts = {}
    for kind in ("exact", "near"):
        chosen = pairs["kind"].to_numpy() == kind
        table = pd.crosstab(np.minimum(a[chosen], b[chosen]), np.maximum(a[chosen], b[chosen]))
        counts[kind] = {
            f"{x} / {y}": int(table.loc[x, y]) for x in table.index for y in table.columns if table.loc[x, y]
        }
    inside = np.zeros(len(manifest), dtype=bool)
    across = np.zeros(len(manifest), dtype=bool)
    same = a == b
    for column in ("a", "b"):
        inside[pairs[column].to_numpy()[same]] = True
        across[pairs[column].to_numpy()[~same]] = True
    clusters = cluster_ids(len(manifest), pairs)
    per_archive = {}
    for name in archives:
        rows = source == name
        sub = pairs[same & (a == name)]
        local = pd.DataFrame(
            {"a": np.searchsorted(np.flatnonzero(rows), sub["a"]), "b": np.searchsorted(np.flatnonzero(rows), sub["b"])}
        )
        per_archive[name] = {
            "images": int(rows.sum()),
            "with_copy_in_same_archive": int(inside[rows].sum()),
            "with_copy_in_other_archive": int(across[rows].sum()),
            "distinct_within_archive": int(len(np.unique(cluster_ids(int(rows.sum()), local)))),
        }
    return {
        "pairs": counts,
        "archives": per_archive,
        "images": int(len(manifest)),
        "distinct_overall": int(len(np.unique(clusters))),
        "rule": {
            "frame_spread": cfg.frame_spread,
            "hash_size": cfg.hash_size,
            "max_hamming": cfg.max_hamming,
            "thumb_size": cfg.thumb_size,
            "min_correlation": cfg.min_correlation,
        },
    }
