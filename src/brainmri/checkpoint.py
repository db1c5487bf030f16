"""Self-contained model checkpoints: weights plus everything ``predict`` needs.

A checkpoint is a plain dict of tensors and JSON-like values, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs). It records the
model name and class names (to rebuild the network and name its outputs), the
image size (the only preprocessing knob; see ``brainmri.preprocess``), the
params it was trained with and the data version (hash of the split table).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from brainmri.models import build_model

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    model_name: str
    classes: list[str]
    image_size: int
    params: dict
    data_version: str
    extra: dict = field(default_factory=dict)


def save_checkpoint(
    path: Path | str,
    model: nn.Module,
    *,
    model_name: str,
    classes: list[str],
    image_size: int,
    params: dict,
    data_version: str,
    extra: dict | None = None,
) -> None:
    """Write atomically (temp file in the same folder, then rename), so a crash never leaves half a checkpoint.

    ``extra`` holds anything JSON-like (or tensors), e.g. the epoch and val
    metrics, or optimiser state for resuming.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "classes": list(classes),
        "image_size": int(image_size),
        "input": "grey [N, 1, image_size, image_size] float in [0, 1]; see brainmri.preprocess.to_model_input",
        "params": params,
        "data_version": data_version,
        "extra": extra or {},
        "state_dict": state,
        "torch_version": str(torch.__version__),
    }
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path | str) -> dict:
    """The raw checkpoint dict (for resuming: it includes ``extra``); refuses unknown formats."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version!r}, this code reads {FORMAT_VERSION}")
    return payload


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model (no pretrained download or weight file needed) in eval mode on ``device``."""
    payload = read_checkpoint(path)
    model = build_model(payload["model_name"], num_classes=len(payload["classes"]), pretrained=False)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.to(device).eval()
    meta = CheckpointMeta(
        model_name=payload["model_name"],
        classes=list(payload["classes"]),
        image_size=payload["image_size"],
        params=payload["params"],
        data_version=payload["data_version"],
        extra=payload["extra"],
    )
    return model, meta
