"""MixStyle (Zhou et al., ICLR 2021): mix feature statistics between the images of a training batch.

Early feature maps carry an image's style (per-channel mean and spread: scanner, sequence, contrast, the source's
look) more than its content. Re-normalising each image's early features to a random convex mix of its own and
another image's statistics makes the style an unreliable cue, so the later layers must rely on content: a
domain-generalisation method across sources that needs no source labels (issue 12, item 3). It acts in training
only, through forward hooks on the trunk's first blocks, so the model, its state dict and inference are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MIXED_BLOCKS = 3
"""How many of the trunk's first blocks get their output mixed (the paper mixes after the first three stages)."""

ALPHA = 0.1
"""Beta(alpha, alpha) draws the mixing weight; the paper's default: most weights near 0 or 1."""


class MixStyle:
    """A forward hook: with probability ``p``, replace a batch's per-image channel statistics by a random mix of its
    own and another image's (a random permutation of the batch). Its draws come from its own seeded generator, so a
    run is reproducible and the rest of training draws what it would draw without it."""

    def __init__(self, p: float, seed: int, eps: float = 1e-6):
        self.p, self.eps = p, eps
        self.rng = np.random.default_rng(seed)

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or self.rng.random() >= self.p or output.shape[0] < 2:
            return None
        batch = output.shape[0]
        mean = output.mean(dim=(2, 3), keepdim=True).detach()
        std = (output.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        weight = torch.from_numpy(self.rng.beta(ALPHA, ALPHA, size=(batch, 1, 1, 1)).astype(np.float32))
        weight = weight.to(output.device, output.dtype)
        other = torch.from_numpy(self.rng.permutation(batch)).to(output.device)
        mixed_mean = weight * mean + (1 - weight) * mean[other]
        mixed_std = weight * std + (1 - weight) * std[other]
        return (output - mean) / std * mixed_std + mixed_mean


def attach_mixstyle(blocks: list[nn.Module], p: float, seed: int) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook MixStyle onto the first ``MIXED_BLOCKS`` of ``blocks`` (one generator each); returns the handles."""
    return [block.register_forward_hook(MixStyle(p, seed + index)) for index, block in enumerate(blocks[:MIXED_BLOCKS])]
