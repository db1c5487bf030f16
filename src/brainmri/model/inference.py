"""Batched inference shared by ``evaluate``, ``predict`` and ``export``: grey images in, logits out.

``logits_and_features`` returns logits, not probabilities, so that the
temperature fitted by the evaluate stage (``brainmri.model.temperature``) can be
applied before the softmax. Besides the logits it returns the
globally average-pooled output of every trunk block from the same forward
pass: the out-of-distribution check (``brainmri.model.ood``) measures how far an
image lies from the training images in those spaces, so with
``evaluate.ood_view: as_is`` it costs no second pass; ``check_features`` makes
the one pass a ``stretched`` check needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..core.preprocess import to_model_input
from .ood import view_images


class ProbabilityModel(nn.Module):
    """A classifier with the calibrated softmax on top, ``softmax(logits / temperature)``: what ``export`` ships."""

    def __init__(self, classifier: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.classifier = classifier
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x).float() / self.temperature, dim=1)


def block_ends(model: nn.Module) -> list[nn.Module]:
    """The module whose output is each trunk block's output (``Classifier.blocks``, input to output).

    A block may be an ``nn.Sequential`` built only to group modules the
    backbone calls one by one (EfficientNet's stem conv + BN): hooking it
    would never fire, hooking its last module does, and for a Sequential the
    backbone does call, its last module's output is the block's output.
    """
    return [block[-1] if isinstance(block, nn.Sequential) else block for block in model.blocks]


@torch.inference_mode()
def logits_and_features(
    model: nn.Module, images: Sequence[np.ndarray], image_size: int, batch_size: int = 64
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits ``[N, classes]`` and, per trunk block, the pooled features ``[N, D_block]`` (both float64).

    ``brainmri.model.temperature.softmax`` turns the logits into probabilities.
    """
    model.eval()
    device = next(model.parameters()).device
    ends = block_ends(model)
    captured: list[list[torch.Tensor]] = [[] for _ in ends]

    def keep_pooled(index: int):
        return lambda _module, _args, output: captured[index].append(output.float().mean(dim=(2, 3)).cpu())

    hooks = [end.register_forward_hook(keep_pooled(k)) for k, end in enumerate(ends)]
    try:
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = to_model_input(images[start : start + batch_size], image_size).to(device)
            chunks.append(model(batch).float().cpu())
    finally:
        for hook in hooks:
            hook.remove()
    if not chunks:
        return np.zeros((0, 0)), []
    return torch.cat(chunks).double().numpy(), [torch.cat(pooled).double().numpy() for pooled in captured]


def check_features(
    model: nn.Module,
    images: Sequence[np.ndarray],
    image_size: int,
    view: str,
    features: list[np.ndarray] | None = None,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """The per-block features an out-of-distribution check of ``view`` scores (``brainmri.model.ood``).

    ``features``: the classifier's own pass over ``images``, reused as they are for ``as_is``; any other view
    takes one more pass over the images as that view shows them.
    """
    if view == "as_is" and features is not None:
        return features
    return logits_and_features(model, view_images(images, view, image_size), image_size, batch_size)[1]
