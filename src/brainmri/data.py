"""The training data path: a decoded tensor cache, batching, and batched augmentation.

Decoding and resizing every PNG in every epoch would repeat the same work (at
512 px it costs about as much as a small-CNN step), so each image is decoded
and resized once (``brainmri.preprocess.resize_grey``) into a uint8
``[N, 1, S, S]`` ``.npy`` file that epochs memory-map. The file name is
a hash of the rows' paths, their pixel hashes and the image size: the same
inputs reuse the file, any change builds a new one.

Augmentation runs on float batches (already on the training device) with
``torchvision.transforms.v2``. v2 draws one set of random parameters per
call, so a batch is augmented image by image (about 1 ms an image at 96 px,
small next to a training step; uint8 rotation is 30× slower, hence float).
The random state comes from a seed per batch, making every batch's
augmentation a pure function of ``(seed, epoch, step)``, independent of
anything else that uses torch's RNG.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm import tqdm

from brainmri.config import AugmentConfig
from brainmri.preprocess import resize_grey

BLUR_SIGMA_MIN = 0.1
"""Smallest blur sigma drawn (torchvision's default): nearly no blur, so some batches stay sharp."""

CROP_ASPECT_RATIO = (0.9, 1.1)
"""Random-resized-crop aspect range: slices are near square, and stronger stretching distorts anatomy."""


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(table: pd.DataFrame, image_size: int) -> str:
    """Hash of (row order, paths, pixel hashes, image size).

    Uses the ``sha256`` column (pixel hash from merge) when the table has
    one; otherwise hashes the files' bytes, which is still far cheaper than
    decoding them.
    """
    paths = [str(path) for path in table["path"]]
    if "sha256" in table.columns:
        hashes = [str(value) for value in table["sha256"]]
    else:
        hashes = [_file_sha256(Path(path)) for path in paths]
    blob = json.dumps({"image_size": int(image_size), "rows": list(zip(paths, hashes))}).encode()
    return hashlib.sha256(blob).hexdigest()


def _decode(path: str, image_size: int) -> np.ndarray:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    return resize_grey(pixels, image_size)


def cached_images(
    table: pd.DataFrame, image_size: int, cache_dir: Path | str, workers: int = 0, desc: str = "decode"
) -> np.ndarray:
    """uint8 ``[len(table), 1, S, S]`` (read-only memory map); row ``i`` is ``table.iloc[i]``.

    Builds the cache when no file has this key: decodes with ``workers``
    threads (0: one per core; Pillow releases the GIL while decoding and
    resizing), then renames the finished file into place so a crash never
    leaves a partial cache under a valid name.
    """
    shape = (len(table), 1, image_size, image_size)
    if not len(table):
        return np.zeros(shape, np.uint8)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"images-{image_size}px-{cache_key(table, image_size)[:24]}.npy"
    if target.exists():
        return np.load(target, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".npy", dir=cache_dir)
    os.close(handle)
    try:
        out = np.lib.format.open_memmap(temp_name, mode="w+", dtype=np.uint8, shape=shape)
        paths = [str(path) for path in table["path"]]
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoded = pool.map(_decode, paths, [image_size] * len(paths), chunksize=16)
            for index, pixels in enumerate(tqdm(decoded, total=len(paths), desc=desc, unit="img", leave=False)):
                out[index, 0] = pixels
        out.flush()
        del out
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return np.load(target, mmap_mode="r")


def label_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class names → int64 indices into ``classes``; an unknown label is an error naming it."""
    lookup = {name: index for index, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(lookup))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    return np.array([lookup[label] for label in labels], dtype=np.int64)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches only: a ragged last batch would skew BatchNorm statistics (fewer images than a batch: one)."""
    return max(1, num_images // batch_size)


def epoch_batches(num_images: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A seeded shuffle cut into ``steps_per_epoch`` batches; the remainder waits for the next epoch's shuffle."""
    order = np.random.default_rng([seed, epoch]).permutation(num_images)
    return [order[step * batch_size : (step + 1) * batch_size] for step in range(steps_per_epoch(num_images, batch_size))]


def sequential_batches(num_images: int, batch_size: int) -> Iterator[slice]:
    """Contiguous slices for evaluation (memory-map friendly: one read per batch)."""
    for start in range(0, num_images, batch_size):
        yield slice(start, min(start + batch_size, num_images))


def batch_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The augmentation seed of one batch (one rank's shard of it), independent of everything else that draws random numbers.

    Ranks other than 0 mix in their rank, so shards do not share transform
    parameters image by image; rank 0 and a single process keep the seeds
    of ``[seed, epoch, step]``.
    """
    entropy = [seed, epoch, step, rank] if rank else [seed, epoch, step]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class BatchAugment:
    """Training-time augmentation of float ``[B, 1, S, S]`` batches in [0, 1], built from ``AugmentConfig``.

    Horizontal flips only (left/right is symmetric enough in axial brain
    slices; up/down is not), random resized crop (zoom in to ``scale_min`` of
    the area), small rotations filling with black (the MRI background), then
    brightness/contrast jitter (scanner and windowing differences); then,
    when switched on, Gaussian blur (lower resolution, thicker slices) and
    additive noise (acquisition noise), both off by default (see
    ``AugmentConfig``).
    """

    def __init__(self, cfg: AugmentConfig, image_size: int):
        steps: list[v2.Transform] = []
        if cfg.hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        if cfg.scale_min < 1:
            steps.append(v2.RandomResizedCrop(image_size, scale=(cfg.scale_min, 1.0), ratio=CROP_ASPECT_RATIO, antialias=True))
        if cfg.rotation_degrees > 0:
            steps.append(v2.RandomRotation(cfg.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=0))
        if cfg.brightness > 0 or cfg.contrast > 0:
            steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
        if cfg.blur_sigma > 0:
            kernel = 2 * math.ceil(3 * cfg.blur_sigma) + 1  # ±3 sigma: the whole Gaussian
            steps.append(v2.GaussianBlur(kernel, sigma=(min(BLUR_SIGMA_MIN, cfg.blur_sigma), cfg.blur_sigma)))
        if cfg.noise_std > 0:
            steps.append(v2.GaussianNoise(sigma=cfg.noise_std, clip=True))
        self.transform = v2.Compose(steps) if steps else None

    def __call__(self, batch: torch.Tensor, seed: int) -> torch.Tensor:
        if self.transform is None:
            return batch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(image) for image in batch]).contiguous(memory_format=torch.channels_last)
