"""Batched inference shared by ``evaluate`` and ``predict``: grey images in, class probabilities out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .preprocess import to_model_input


def read_grey_png(path) -> np.ndarray:
    """Read one of the pipeline's normalised images (8-bit grey PNG) as a uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, images: Sequence[np.ndarray], image_size: int, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities ``[N, classes]`` for 8-bit grey images, in evaluation mode on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size], image_size).to(device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        chunks.append(torch.softmax(model(batch).float(), dim=1).cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float64)
