"""Saliency maps (Grad-CAM, Grad-CAM++, input gradients), overlays, and how well they land on the tumour.

Three methods, all from one backward pass of the target class score
(``saliency``):

- **Grad-CAM** (Selvaraju et al. 2017) weights each channel of the last
  spatial feature map (``brainmri.model.architectures.gradcam_layer``) by the mean
  gradient of the score over that channel, sums the weighted channels and
  keeps the positive part;
- **Grad-CAM++** (Chattopadhay et al. 2018) weights each channel by
  ``sum(alpha * relu(gradient))`` with the per-pixel ``alpha = g^2 / (2 g^2 +
  sum(A) g^3)`` (their closed form for an exponentiated score), so a channel
  that fires on a small region counts as much as one that fires on a large
  one: meant for several or small objects;
- **input gradient** (Simonyan et al. 2014): the absolute gradient of the
  score with respect to each input pixel, at full input resolution.

They are written here with PyTorch hooks rather than taken from the
``grad-cam`` package, which pulls in OpenCV for the same few lines. Maps are
computed for a whole batch in one backward pass: in evaluation mode
(BatchNorm frozen, no dropout) every image's score depends only on that
image, so the gradient of the summed scores is each image's own.
``DEFAULT_SALIENCY`` is the method the overlays use.

Localisation, where a tumour mask or box is known:

- **pointing game** (Zhang et al. 2016): the map's single peak falls inside
  the tumour region, strictly (``pointing_game``) and with the original
  paper's tolerance of 15 pixels of the image (``pointing_game_15px``; the
  caller converts it to map pixels, ``tolerance_in_map``);
- **mass in region**: the share of the map's total saliency inside the
  region ("energy-based pointing game", Wang et al. 2020).

A map spread evenly over the image would score the region's area fraction on
the strict pointing game and the mass, so that fraction is reported beside
them as the chance level (the tolerant game's chance is higher: the region
grown by the tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..core.preprocess import to_model_input
from .architectures import gradcam_layer

OVERLAY_ALPHA = 0.45
"""Weight of the heat map over the grey image in overlays."""

OVERLAY_MAX_SIDE = 256
"""Overlays are drawn at the image's own size, shrunk to at most this side to keep them small."""


SALIENCY_METHODS = ("gradcam", "gradcam_pp", "input_gradient")

DEFAULT_SALIENCY = "gradcam"
"""The method of the overlays: Grad-CAM++ and input gradients did not point better for every class on the real
data (README, "Where the model looks"), so Grad-CAM stays."""

POINTING_TOLERANCE_PX = 15
"""Zhang et al.'s pointing-game tolerance, in pixels of the image as stored."""


def _backward(
    model: nn.Module, batch: torch.Tensor, targets: Sequence[int] | None, layer: nn.Module
) -> tuple[torch.Tensor, ...]:
    """One backward pass of the target class scores: the layer's activation and gradient, the input gradient, the
    logits."""
    saved: dict[str, torch.Tensor] = {}

    def keep(_module, _args, output: torch.Tensor) -> None:
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

    hook = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inputs = batch.detach().requires_grad_(True)  # a graph even if the weights are frozen
            logits = model(inputs).float()
            chosen = logits.argmax(dim=1) if targets is None else torch.as_tensor(list(targets), device=logits.device)
            model.zero_grad(set_to_none=True)
            logits.gather(1, chosen.view(-1, 1)).sum().backward()
    finally:
        hook.remove()
    model.zero_grad(set_to_none=True)
    return (
        saved["activation"].detach().float(),
        saved["gradient"].float(),
        inputs.grad.detach().float(),
        logits.detach(),
    )


def channel_weights(activation: torch.Tensor, gradient: torch.Tensor, method: str) -> torch.Tensor:
    """Per-channel weights ``[N, C, 1, 1]``: Grad-CAM's mean gradient, or Grad-CAM++'s alpha-weighted positive
    gradient."""
    if method == "gradcam":
        return gradient.mean(dim=(2, 3), keepdim=True)
    squared = gradient**2
    denominator = 2 * squared + activation.sum(dim=(2, 3), keepdim=True) * gradient**3
    defined = denominator != 0  # 0 where the gradient is 0: that pixel adds nothing (no 0/0)
    alpha = torch.where(
        defined, squared / torch.where(defined, denominator, torch.ones_like(denominator)), torch.zeros_like(squared)
    )
    return (alpha * F.relu(gradient)).sum(dim=(2, 3), keepdim=True)


def _unit_peak(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum; a map with no positive value is all zeros."""
    peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, maps / peak.clamp_min(1e-12), torch.zeros_like(maps))


def saliency(
    model: nn.Module,
    batch: torch.Tensor,
    targets: Sequence[int] | None = None,
    method: str = DEFAULT_SALIENCY,
    layer: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Saliency maps ``[N, S, S]`` in [0, 1] at the input size and softmax probabilities ``[N, classes]``.

    ``method`` is one of ``SALIENCY_METHODS``; ``targets`` are the class
    indices to explain (default: each image's predicted class); ``layer``
    defaults to ``gradcam_layer(model)``. The model's ``.grad`` fields are
    cleared before and after, so evaluation leaves no gradients behind.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {method!r} (known: {', '.join(SALIENCY_METHODS)})")
    model.eval()
    activation, gradient, input_gradient, logits = _backward(
        model, batch, targets, layer if layer is not None else gradcam_layer(model)
    )
    if method == "input_gradient":
        maps = input_gradient.abs().amax(dim=1)
    else:
        cam = F.relu((channel_weights(activation, gradient, method) * activation).sum(dim=1, keepdim=True))
        maps = F.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    return _unit_peak(maps).cpu().numpy(), torch.softmax(logits, dim=1).cpu().numpy()


def gradcam(
    model: nn.Module, batch: torch.Tensor, targets: Sequence[int] | None = None, layer: nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps and probabilities: ``saliency`` with ``method="gradcam"``."""
    return saliency(model, batch, targets, "gradcam", layer)


def gradcam_images(
    model: nn.Module,
    images: Sequence[np.ndarray],
    image_size: int,
    targets: Sequence[int] | None = None,
    batch_size: int = 32,
    method: str = DEFAULT_SALIENCY,
) -> tuple[np.ndarray, np.ndarray]:
    """``saliency`` (``DEFAULT_SALIENCY`` unless ``method`` says otherwise) over 8-bit grey images of any size,
    in batches, with the shared preprocessing."""
    device = next(model.parameters()).device
    cams, probas = [], []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size], image_size).to(device)
        chunk_targets = None if targets is None else targets[start : start + batch_size]
        cam, proba = saliency(model, batch, chunk_targets, method)
        cams.append(cam)
        probas.append(proba)
    if not cams:
        return np.zeros((0, image_size, image_size)), np.zeros((0, 0))
    return np.concatenate(cams), np.concatenate(probas)


def region_mask(size: int | tuple[int, int], mask_path: str = "", box: str = "") -> np.ndarray | None:
    """The tumour region as a boolean ``[size, size]`` array (or ``[height, width]`` for a pair), from a mask PNG
    or a YOLO box; None if neither.

    ``box`` is YOLO ``"cx cy w h"``, normalised to [0, 1]. The mask is
    resized with nearest-neighbour sampling, the same square resize the
    model's input gets, so map and region stay aligned.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if mask_path:
        with Image.open(mask_path) as mask:
            resized = mask.convert("L").resize((width, height), Image.Resampling.NEAREST)
        region = np.asarray(resized) > 127
        return region if region.any() else None
    if box:
        cx, cy, w, h = (float(v) for v in box.split())
        inside_x = np.abs((np.arange(width) + 0.5) / width - cx) <= w / 2
        inside_y = np.abs((np.arange(height) + 0.5) / height - cy) <= h / 2
        region = inside_y[:, None] & inside_x[None, :]
        return region if region.any() else None
    return None


def tolerance_in_map(original_side: int, map_side: int, pixels: float = POINTING_TOLERANCE_PX) -> float:
    """A tolerance of ``pixels`` of the stored image (longest side ``original_side``) in pixels of the square map."""
    return pixels * map_side / original_side


def localisation(cam: np.ndarray, region: np.ndarray, tolerance: float = 0.0) -> dict:
    """Pointing-game hit (strict, and within ``tolerance`` map pixels of the region), saliency mass inside
    ``region`` and the region's area fraction (chance level of the strict game)."""
    total = float(cam.sum())
    if total <= 0:
        return {"hit": False, "hit_tolerant": False, "mass": 0.0, "area": float(region.mean())}
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    rows, columns = np.nonzero(region)
    distance = float(np.sqrt(((rows - peak[0]) ** 2 + (columns - peak[1]) ** 2).min()))
    return {
        "hit": bool(region[peak]),
        "hit_tolerant": distance <= tolerance,
        "mass": float(cam[region].sum() / total),
        "area": float(region.mean()),
    }


def summarise_localisation(rows: list[dict], classes: Sequence[str]) -> dict:
    """Per class and over all: ``n``, ``pointing_game``, ``pointing_game_15px``, ``mass_in_region`` and ``chance``
    (mean area fraction).

    ``rows`` are ``localisation`` results with a ``label`` key; classes with
    no known region are left out.
    """

    def summary(members: list[dict]) -> dict:
        return {
            "n": len(members),
            "pointing_game": round(float(np.mean([m["hit"] for m in members])), 4),
            "pointing_game_15px": round(float(np.mean([m["hit_tolerant"] for m in members])), 4),
            "mass_in_region": round(float(np.mean([m["mass"] for m in members])), 4),
            "chance": round(float(np.mean([m["area"] for m in members])), 4),
        }

    result = {name: summary(members) for name in classes if (members := [r for r in rows if r["label"] == name])}
    if rows:
        result["all"] = summary(rows)
    return result


def _jet(values: np.ndarray) -> np.ndarray:
    """Matplotlib's ``jet`` colours for values in [0, 1], as uint8 RGB."""
    from matplotlib import colormaps

    return (colormaps["jet"](values)[..., :3] * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """RGB picture: the grey image and, beside it, the same image under the heat map (region outlined in white).

    The map is resized to the image (bilinear), so the overlay shows the
    image the user gave, not the model's square input.
    """
    height, width = image.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    heat_map = Image.fromarray((np.clip(cam, 0, 1) * 255).round().astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR
    )
    heat = _jet(np.asarray(heat_map) / 255.0).astype(np.float64)
    blended = (1 - OVERLAY_ALPHA) * grey[..., None] + OVERLAY_ALPHA * heat
    if region is not None:
        outline = (
            np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
        )
        edge = outline & ~_eroded(outline)
        blended[edge] = 255
    left = np.repeat(grey[..., None], 3, axis=2)
    gap = np.full((size[1], 4, 3), 255.0)
    return np.concatenate([left, gap, blended], axis=1).round().clip(0, 255).astype(np.uint8)


def _eroded(region: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood), so ``region & ~eroded`` is the outline."""
    padded = np.pad(region, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def save_overlay(path: Path, image: np.ndarray, cam: np.ndarray, region: np.ndarray | None = None) -> None:
    """Write ``overlay`` as a PNG (Pillow writes no timestamp: equal pixels give equal bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, cam, region)).save(path, format="PNG")
