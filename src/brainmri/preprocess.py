"""The one image preprocessing shared by training, evaluation and prediction.

Images enter the library as 8-bit grey arrays (see ``brainmri.imaging``); the
model sees ``image_size``-square float tensors in [0, 1] with one channel.
Channel replication and ImageNet normalisation for pretrained backbones happen
inside the model (``brainmri.models``), so a checkpoint needs only its
``image_size`` to be used on new images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def resize_grey(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Resize an 8-bit grey image to a square ``image_size`` with antialiasing (aspect ratio is not kept:
    brain slices are close to square and the sources are already square)."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got {pixels.dtype} {pixels.shape}")
    if pixels.shape == (image_size, image_size):
        return pixels
    image = Image.fromarray(pixels, mode="L").resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def to_model_input(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """Stack 8-bit grey images into a float batch ``[N, 1, S, S]`` in [0, 1]."""
    batch = np.stack([resize_grey(image, image_size) for image in images])
    return uint8_batch_to_float(torch.from_numpy(batch).unsqueeze(1))


def uint8_batch_to_float(batch: torch.Tensor) -> torch.Tensor:
    """``[N, 1, S, S]`` uint8 → float in [0, 1]; the cache stores uint8 and converts per batch."""
    return batch.float().div_(255.0)
