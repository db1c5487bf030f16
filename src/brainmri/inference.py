"""Batched inference shared by ``evaluate``, ``predict`` and ``export``: grey images in, probabilities out.

Besides the class probabilities, ``predict_with_features`` returns the
*penultimate features* (the input of the model's last linear layer) from the
same forward pass: the out-of-distribution check (``brainmri.ood``) measures
how far an image lies from the training images in that space, so it costs no
second pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .preprocess import to_model_input


def read_grey_png(path) -> np.ndarray:
    """Read one of the pipeline's normalised images (8-bit grey PNG) as a uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


class ProbabilityModel(nn.Module):
    """A classifier with softmax on top: what ``predict`` reports and what ``export`` ships."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x).float(), dim=1)


def feature_layer(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (its classification head): its input is the penultimate feature vector.

    Both architectures in ``brainmri.models`` end in one linear layer after
    global pooling, so this finds the head without knowing the architecture.
    """
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to take penultimate features from")
    return linears[-1]


@torch.inference_mode()
def predict_with_features(
    model: nn.Module, images: Sequence[np.ndarray], image_size: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``[N, classes]`` and penultimate features ``[N, D]`` (float64) for 8-bit grey images."""
    model.eval()
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = feature_layer(model).register_forward_pre_hook(lambda _module, args: captured.append(args[0].float().cpu()))
    try:
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = to_model_input(images[start : start + batch_size], image_size).to(device)
            chunks.append(torch.softmax(model(batch).float(), dim=1).cpu())
    finally:
        hook.remove()
    if not chunks:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return torch.cat(chunks).double().numpy(), torch.cat(captured).double().numpy()
