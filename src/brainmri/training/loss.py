"""Training loss for labels of two kinds: a class, or "a tumour of unknown type".

Br35H's ``yes`` images are tumours whose type nobody recorded. Left out of training, they leave the look of
Br35H pictures tied to ``no_tumor`` alone (its ``no`` images are in train), which is the source shortcut issue 12
is about. Kept in as "some tumour", they carry exactly what is known: the loss of such an image is
-log P(any tumour) = -log(1 - P(no_tumor)), and it says nothing about which tumour class.

An unknown-type tumour has label index ``UNKNOWN_TUMOUR_INDEX`` (-1). A batch without one is scored by
torch's cross-entropy as before, so runs without such images are unchanged to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from brainmri.config import UNKNOWN_TUMOUR, UNKNOWN_TUMOUR_INDEX

NO_TUMOUR = "no_tumor"


def no_tumour_index(classes: Sequence[str]) -> int | None:
    """Where ``no_tumor`` sits among ``classes`` (None: a class list without it, so no unknown-type labels)."""
    return list(classes).index(NO_TUMOUR) if NO_TUMOUR in classes else None


def training_label_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class names → int64 indices into ``classes``, ``tumor_unknown`` → -1; any other label is an error naming it."""
    lookup = {name: index for index, name in enumerate(classes)}
    lookup[UNKNOWN_TUMOUR] = UNKNOWN_TUMOUR_INDEX
    unknown = sorted(set(labels) - set(lookup))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)} nor {UNKNOWN_TUMOUR!r}")
    if UNKNOWN_TUMOUR in set(labels) and NO_TUMOUR not in lookup:
        raise ValueError(f"{UNKNOWN_TUMOUR!r} images need a {NO_TUMOUR!r} class to be told apart from")
    return np.array([lookup[label] for label in labels], dtype=np.int64)


def any_tumour_nll(logits: torch.Tensor, no_tumour: int) -> torch.Tensor:
    """Per row, -log P(any tumour) = logsumexp(all logits) - logsumexp(tumour logits)."""
    tumour = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    tumour[no_tumour] = False
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(logits[:, tumour], dim=1)


class TumourAwareLoss(nn.Module):
    """Cross-entropy (optionally class-weighted and label-smoothed) for class labels, -log P(any tumour) for -1.

    The mean is over the batch, each unknown-type row weighing 1 and each class row its class weight, which is
    torch's weighted mean when the batch holds class rows only.
    """

    def __init__(
        self,
        no_tumour: int | None,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__()
        self.no_tumour = no_tumour
        self.weight = weight
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def per_row(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each row's loss, a class row's multiplied by its class weight (torch's ``reduction="none"``)."""
        known = target != UNKNOWN_TUMOUR_INDEX
        per_row = torch.zeros(len(target), dtype=logits.dtype, device=logits.device)
        if bool(known.any()):
            per_row[known] = nn.functional.cross_entropy(
                logits[known], target[known], weight=self.weight, label_smoothing=self.label_smoothing, reduction="none"
            )
        if not bool(known.all()):
            per_row[~known] = any_tumour_nll(logits[~known], self.no_tumour)
        return per_row

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = target != UNKNOWN_TUMOUR_INDEX
        if bool(known.all()):
            return nn.functional.cross_entropy(
                logits, target, weight=self.weight, label_smoothing=self.label_smoothing, reduction=self.reduction
            )
        per_row = self.per_row(logits, target)
        if self.reduction == "sum":
            return per_row.sum()
        row_weight = torch.ones(len(target), dtype=logits.dtype, device=logits.device)
        if self.weight is not None:
            row_weight[known] = self.weight[target[known]]
        return per_row.sum() / row_weight.sum()


def hits(logits: torch.Tensor, target: torch.Tensor, no_tumour: int | None) -> torch.Tensor:
    """Per row, whether the arg-max is right: the class for a class label, any tumour class for -1."""
    predicted = logits.argmax(1)
    if no_tumour is None:
        return predicted == target
    return torch.where(target == UNKNOWN_TUMOUR_INDEX, predicted != no_tumour, predicted == target)


class GroupDRO(nn.Module):
    """Group DRO (Sagawa et al., 2020, "Distributionally robust neural networks"): the loss is a weighted sum of
    the groups' mean losses in the batch, with the weights ``q`` moved towards the groups fitted worst.

    Why: in the training data a (source, class) cell can be small and unlike the rest (Br35H's tumour-free
    pictures, its tumours of unknown type); under the plain mean the large cells outvote it, and the model is free
    to fit it by its source's look. Group DRO raises a cell's weight while its loss stays high
    (``q_g <- q_g * exp(eta * loss_g)``, then normalised), so the worst-fitted cell steers the gradient. A group
    absent from a batch has loss 0 there and keeps its weight before the normalisation (the paper's reference
    code does the same). ``q`` is a buffer: it travels with the module's state dict, so a resumed run continues
    from the same weights.
    """

    def __init__(self, base: TumourAwareLoss, num_groups: int, eta: float):
        super().__init__()
        if num_groups < 1 or eta <= 0:
            raise ValueError(f"group DRO needs at least one group and a positive step size (got {num_groups}, {eta})")
        self.base, self.eta = base, eta
        self.register_buffer("q", torch.full((num_groups,), 1.0 / num_groups))

    @property
    def no_tumour(self) -> int | None:
        return self.base.no_tumour

    def forward(self, logits: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        per_row = self.base.per_row(logits, target)
        sums = torch.zeros(len(self.q), dtype=per_row.dtype, device=per_row.device).index_add(0, group, per_row)
        counts = torch.bincount(group, minlength=len(self.q)).to(per_row.dtype)
        group_loss = sums / counts.clamp(min=1)
        with torch.no_grad():
            raised = self.q * torch.exp(self.eta * group_loss)
            self.q.copy_(raised / raised.sum())
        return (self.q * group_loss).sum()


def group_indices(sources: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Each row's group (its (source, label) cell) as an int64 index, and the cells in sorted order."""
    cells = list(zip(sources, labels, strict=True))
    names = sorted(set(cells))
    index = {cell: position for position, cell in enumerate(names)}
    return np.array([index[cell] for cell in cells], dtype=np.int64), names
