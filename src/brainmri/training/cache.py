"""The training data path: a decoded tensor cache, batching, and batched augmentation.

Decoding and resizing every PNG in every epoch would repeat the same work (at
512 px it costs about as much as a small-CNN step), so each image is decoded
and resized once (``brainmri.core.preprocess.prepare_grey``, with the
``train.input`` crop and intensity settings) into a uint8 ``[N, 1, S, S]``
``.npy`` file that epochs memory-map. The file name is a hash of the rows'
paths, their pixel hashes, the image size and the input settings: the same
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
import io
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
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from brainmri.config import AugmentConfig, InputConfig
from brainmri.core.hashing import file_digest
from brainmri.core.imaging import read_grey_png
from brainmri.core.preprocess import NO_INPUT, prepare_grey

BLUR_SIGMA_MIN = 0.1
"""Smallest blur sigma drawn (torchvision's default): nearly no blur, so some batches stay sharp."""

CROP_ASPECT_RATIO = (0.9, 1.1)
"""Random-resized-crop aspect range: slices are near square, and stronger stretching distorts anatomy."""


def cache_key(table: pd.DataFrame, image_size: int, spec: InputConfig = NO_INPUT) -> str:
    """Hash of (row order, paths, pixel hashes, image size, input settings).

    Uses the ``sha256`` column (pixel hash from merge) when the table has
    one; otherwise hashes the files' bytes, which is still far cheaper than
    decoding them. The default input settings add nothing to the hash, so
    caches built before ``train.input`` existed stay valid.
    """
    paths = [str(path) for path in table["path"]]
    if "sha256" in table.columns:
        hashes = [str(value) for value in table["sha256"]]
    else:
        hashes = [file_digest(path) for path in paths]
    key = {"image_size": int(image_size), "rows": list(zip(paths, hashes, strict=True))}
    if spec != NO_INPUT:
        key["input"] = spec.model_dump(mode="json")
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def _decode(path: str, image_size: int, spec: InputConfig) -> np.ndarray:
    return prepare_grey(read_grey_png(path), image_size, spec)


def cached_images(
    table: pd.DataFrame,
    image_size: int,
    cache_dir: Path | str,
    workers: int = 0,
    desc: str = "decode",
    spec: InputConfig = NO_INPUT,
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
    target = cache_dir / f"images-{image_size}px-{cache_key(table, image_size, spec)[:24]}.npy"
    if target.exists():
        return np.load(target, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".npy", dir=cache_dir)
    os.close(handle)
    try:
        out = np.lib.format.open_memmap(temp_name, mode="w+", dtype=np.uint8, shape=shape)
        paths = [str(path) for path in table["path"]]
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoded = pool.map(_decode, paths, [image_size] * len(paths), [spec] * len(paths), chunksize=16)
            for index, pixels in enumerate(tqdm(decoded, total=len(paths), desc=desc, unit="img", leave=False)):
                out[index, 0] = pixels
        out.flush()
        del out
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return np.load(target, mmap_mode="r")


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches only: a ragged last batch would skew BatchNorm statistics (fewer images than a batch: one)."""
    return max(1, num_images // batch_size)


def source_balanced_weights(labels: Sequence[str], sources: Sequence[str]) -> np.ndarray:
    """Sampling probability per image: classes equally likely, and within a class the sources that have it.

    Why: class is confounded with source (one source may hold most of a class, another none of it), so a
    plain shuffle lets a model learn "looks like source S" for "class C". Balancing sources within each
    class takes away the frequency part of that shortcut; a class a source lacks stays lacking.
    """
    cells = pd.DataFrame({"label": np.asarray(labels, dtype=str), "source": np.asarray(sources, dtype=str)})
    cell_size = cells.groupby(["label", "source"])["label"].transform("size").to_numpy()
    sources_of_class = cells.groupby("label")["source"].transform("nunique").to_numpy()
    classes = cells["label"].nunique()
    return 1.0 / (classes * sources_of_class * cell_size)


def epoch_batches(
    num_images: int, batch_size: int, seed: int, epoch: int, weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """A seeded shuffle cut into ``steps_per_epoch`` batches; the remainder waits for the next epoch's shuffle.

    With ``weights`` (probabilities summing to 1), the same number of batches is drawn with replacement instead.
    """
    rng = np.random.default_rng([seed, epoch])
    if weights is None:
        order = rng.permutation(num_images)
    else:
        order = rng.choice(num_images, size=steps_per_epoch(num_images, batch_size) * batch_size, p=weights)
    return [
        order[step * batch_size : (step + 1) * batch_size] for step in range(steps_per_epoch(num_images, batch_size))
    ]


def sequential_batches(num_images: int, batch_size: int) -> Iterator[slice]:
    """Contiguous slices for evaluation (memory-map friendly: one read per batch)."""
    for start in range(0, num_images, batch_size):
        yield slice(start, min(start + batch_size, num_images))


def batch_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The augmentation seed of one batch (one rank's shard of it), independent of everything else that draws
    random numbers.

    Ranks other than 0 mix in their rank, so shards do not share transform
    parameters image by image; rank 0 and a single process keep the seeds
    of ``[seed, epoch, step]``.
    """
    entropy = [seed, epoch, step, rank] if rank else [seed, epoch, step]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


BIAS_FIELD_GRID = 4
"""The bias field is bicubic interpolation of a ``4 x 4`` grid of random values: smooth across the slice,
like a coil's sensitivity profile."""


class RandomGamma(v2.Transform):
    """``x ** gamma`` with gamma log-uniform in ``[1 / (1 + spread), 1 + spread]``: sequence and windowing
    differences that change mid-tones more than black and white."""

    def __init__(self, spread: float):
        super().__init__()
        self.log_range = math.log1p(spread)

    def make_params(self, flat_inputs: list) -> dict:
        return {"gamma": math.exp((2 * torch.rand(()).item() - 1) * self.log_range)}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        return inpt.clamp(0, 1).pow(params["gamma"])


class RandomBiasField(v2.Transform):
    """Multiply by ``exp(a * f)``: ``f`` a smooth field scaled to ``max |f| = 1``, ``a`` uniform in
    ``[0, amplitude]``: the slow intensity drift across the slice that differs by coil and scanner."""

    def __init__(self, amplitude: float):
        super().__init__()
        self.amplitude = amplitude

    def make_params(self, flat_inputs: list) -> dict:
        grid = torch.randn(1, 1, BIAS_FIELD_GRID, BIAS_FIELD_GRID)
        return {"grid": grid / grid.abs().max().clamp_min(1e-6), "strength": torch.rand(()).item() * self.amplitude}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        grid = params["grid"].to(inpt.device, inpt.dtype)
        field = nn.functional.interpolate(grid, size=tuple(inpt.shape[-2:]), mode="bicubic", align_corners=True)[0]
        return (inpt * torch.exp(params["strength"] * field.clamp(-1, 1))).clamp(0, 1)


class RandomDownUp(v2.Transform):
    """Resample down to a side factor drawn from ``[factor_min, 1]`` and back up: lower acquired resolution."""

    def __init__(self, factor_min: float):
        super().__init__()
        self.factor_min = factor_min

    def make_params(self, flat_inputs: list) -> dict:
        return {"factor": self.factor_min + (1 - self.factor_min) * torch.rand(()).item()}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        height, width = inpt.shape[-2:]
        small = [max(1, round(height * params["factor"])), max(1, round(width * params["factor"]))]
        return v2.functional.resize(v2.functional.resize(inpt, small, antialias=True), [height, width], antialias=True)


class FloatJPEG(v2.Transform):
    """JPEG re-encoding at a quality drawn from ``[quality_min, 100]``, for float images in [0, 1] on any device:
    through CPU uint8 and back, as the sources' JPEG exports were made. Pillow encodes (torchvision's own
    ``v2.JPEG`` goes through ``torchvision.io``, deprecated since 0.29)."""

    def __init__(self, quality_min: int):
        super().__init__()
        self.quality_min = quality_min

    def make_params(self, flat_inputs: list) -> dict:
        return {"quality": int(torch.randint(self.quality_min, 101, ()).item())}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        channels = []
        for channel in inpt.detach().clamp(0, 1).mul(255).round().to("cpu", torch.uint8).numpy():
            buffer = io.BytesIO()
            Image.fromarray(channel).save(buffer, format="JPEG", quality=params["quality"])
            with Image.open(buffer) as decoded:
                channels.append(np.asarray(decoded, dtype=np.uint8))
        return torch.from_numpy(np.stack(channels)).to(inpt.device, inpt.dtype).div(255)


class BatchAugment:
    """Training-time augmentation of float ``[B, 1, S, S]`` batches in [0, 1], built from ``AugmentConfig``.

    Horizontal flips only (left/right is symmetric enough in axial brain
    slices; up/down is not), random resized crop (zoom in to ``scale_min`` of
    the area), small rotations filling with black (the MRI background), then
    brightness/contrast jitter (scanner and windowing differences); then,
    when switched on, bias field and gamma (coil and sequence differences),
    down-up resampling (resolution), Gaussian blur (thicker slices),
    additive noise (acquisition noise) and JPEG re-encoding (how the sources
    were exported), all off by default (see ``AugmentConfig``): a switch that
    is off adds no step, so the default pipeline draws the same numbers as
    before they existed.
    """

    def __init__(self, cfg: AugmentConfig, image_size: int):
        steps: list[v2.Transform] = []
        if cfg.hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        if cfg.scale_min < 1:
            steps.append(
                v2.RandomResizedCrop(image_size, scale=(cfg.scale_min, 1.0), ratio=CROP_ASPECT_RATIO, antialias=True)
            )
        if cfg.rotation_degrees > 0:
            steps.append(v2.RandomRotation(cfg.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=0))
        if cfg.brightness > 0 or cfg.contrast > 0:
            steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
        if cfg.bias_field > 0:
            steps.append(RandomBiasField(cfg.bias_field))
        if cfg.gamma > 0:
            steps.append(RandomGamma(cfg.gamma))
        if cfg.downsample_min < 1:
            steps.append(RandomDownUp(cfg.downsample_min))
        if cfg.blur_sigma > 0:
            kernel = 2 * math.ceil(3 * cfg.blur_sigma) + 1  # ±3 sigma: the whole Gaussian
            steps.append(v2.GaussianBlur(kernel, sigma=(min(BLUR_SIGMA_MIN, cfg.blur_sigma), cfg.blur_sigma)))
        if cfg.noise_std > 0:
            steps.append(v2.GaussianNoise(sigma=cfg.noise_std, clip=True))
        if cfg.jpeg_quality_min < 100:
            steps.append(FloatJPEG(cfg.jpeg_quality_min))
        self.transform = v2.Compose(steps) if steps else None

    def __call__(self, batch: torch.Tensor, seed: int) -> torch.Tensor:
        if self.transform is None:
            return batch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(image) for image in batch]).contiguous(memory_format=torch.channels_last)
