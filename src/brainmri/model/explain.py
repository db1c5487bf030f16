"""Grad-CAM saliency maps, overlays, and how well they land on the tumour.

Grad-CAM (Selvaraju et al. 2017) weights each channel of the last spatial
feature map (``brainmri.model.architectures.gradcam_layer``) by the mean gradient of the
target class score over that channel, sums the weighted channels and keeps
the positive part. It is written here with two PyTorch hooks rather than
taken from the ``grad-cam`` package, which pulls in OpenCV for the same
thirty lines. Maps are computed for a whole batch in one backward pass: in
evaluation mode (BatchNorm frozen, no dropout) every image's score depends
only on that image, so the gradient of the summed scores is each image's own.

Localisation, where a tumour mask or box is known:

- **pointing game** (Zhang et al. 2016): the map's single peak falls inside
  the tumour region (strict: no tolerance margin);
- **mass in region**: the share of the map's total saliency inside the
  region ("energy-based pointing game", Wang et al. 2020).

A map spread evenly over the image would score the region's area fraction on
both, so that fraction is reported beside them as the chance level.
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


def gradcam(
    model: nn.Module, batch: torch.Tensor, targets: Sequence[int] | None = None, layer: nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps ``[N, S, S]`` in [0, 1] (upsampled to the input size) and softmax probabilities ``[N, classes]``.

    ``targets`` are the class indices to explain (default: each image's
    predicted class); ``layer`` defaults to ``gradcam_layer(model)``. A map
    with no positive evidence is all zeros. The model's ``.grad`` fields are
    cleared before and after, so evaluation leaves no gradients behind.
    """
    model.eval()
    layer = layer if layer is not None else gradcam_layer(model)
    saved: dict[str, torch.Tensor] = {}

    def keep(_module, _args, output: torch.Tensor) -> None:
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

    hook = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(batch.detach().requires_grad_(True)).float()  # a graph even if the weights are frozen
            chosen = logits.argmax(dim=1) if targets is None else torch.as_tensor(list(targets), device=logits.device)
            model.zero_grad(set_to_none=True)
            logits.gather(1, chosen.view(-1, 1)).sum().backward()
    finally:
        hook.remove()
    activation, gradient = saved["activation"].detach().float(), saved["gradient"].float()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    model.zero_grad(set_to_none=True)
    return cam.cpu().numpy(), torch.softmax(logits.detach(), dim=1).cpu().numpy()


def gradcam_images(
    model: nn.Module,
    images: Sequence[np.ndarray],
    image_size: int,
    targets: Sequence[int] | None = None,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``gradcam`` over 8-bit grey images of any size, in batches, with the shared preprocessing."""
    device = next(model.parameters()).device
    cams, probas = [], []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size], image_size).to(device)
        chunk_targets = None if targets is None else targets[start : start + batch_size]
        cam, proba = gradcam(model, batch, chunk_targets)
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


def localisation(cam: np.ndarray, region: np.ndarray) -> dict:
    """Pointing-game hit, saliency mass inside ``region`` and the region's area fraction (chance level)."""
    total = float(cam.sum())
    return {
        "hit": bool(region.flat[int(np.argmax(cam))]) if total > 0 else False,
        "mass": float(cam[region].sum() / total) if total > 0 else 0.0,
        "area": float(region.mean()),
    }


def summarise_localisation(rows: list[dict], classes: Sequence[str]) -> dict:
    """Per class and over all: ``n``, ``pointing_game``, ``mass_in_region`` and ``chance`` (mean area fraction).

    ``rows`` are ``localisation`` results with a ``label`` key; classes with
    no known region are left out.
    """

    def summary(members: list[dict]) -> dict:
        return {
            "n": len(members),
            "pointing_game": round(float(np.mean([m["hit"] for m in members])), 4),
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
