"""Self-contained model checkpoints: weights plus everything ``predict`` needs.

A checkpoint is a plain dict of tensors and JSON-like values, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs). It records the
model name and class names (to rebuild the network and name its outputs), the
preprocessing (the image size and, when training set any, the ``train.input``
crop and intensity settings under ``preprocess``; see ``brainmri.core.preprocess``),
the params it was trained with and the data version (hash of the split table).
A checkpoint without ``preprocess`` (older ones, and the default settings,
which are left out so default checkpoints keep their bytes) means ``none``.

A checkpoint from someone else is untrusted input: loading it refuses pickled
objects other than tensors and plain values, and checks every field it relies
on (model name, class names, image size, weights that fit that model), so a
wrong file ends in one ``CheckpointError`` line naming it and the reason.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from brainmri.config import InputConfig
from brainmri.model.architectures import ModelError, build_model

from ..errors import UserError

FORMAT_VERSION = 1
MAX_IMAGE_SIZE = 1024
"""The largest ``image_size`` a checkpoint may ask for (params allow no more)."""


class CheckpointError(UserError, ValueError):
    """A file that is not a usable checkpoint; the message names it and says why, on one line."""


@dataclass(frozen=True)
class CheckpointMeta:
    model_name: str
    classes: list[str]
    image_size: int
    params: dict
    data_version: str
    extra: dict = field(default_factory=dict)
    preprocess: InputConfig = InputConfig()


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
    preprocess: InputConfig = InputConfig(),
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
    if preprocess != InputConfig():
        payload["preprocess"] = preprocess.model_dump(mode="json")
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path | str) -> dict:
    """The raw checkpoint dict (for resuming: it includes ``extra``); ``CheckpointError`` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file" if not path.exists() else f"{path}: not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors and plain values"
        ) from None
    except Exception as error:  # torch raises RuntimeError, KeyError, EOFError... on files that are not checkpoints
        raise CheckpointError(
            f"{path}: not a checkpoint ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a checkpoint written by the train stage")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this code reads {FORMAT_VERSION}")
    _check_fields(path, payload)
    return payload


def _check_fields(path: Path, payload: dict) -> None:
    """Refuse a checkpoint whose fields predict relies on are missing or absurd."""
    classes = payload.get("classes")
    names = classes if isinstance(classes, list) else []
    if len(names) < 2 or not all(isinstance(c, str) and c for c in names) or len(set(names)) != len(names):
        raise CheckpointError(f"{path}: 'classes' must be a list of at least 2 distinct names, got {classes!r:.80}")
    size = payload.get("image_size")
    if type(size) is not int or not 16 <= size <= MAX_IMAGE_SIZE:
        raise CheckpointError(
            f"{path}: 'image_size' must be a whole number from 16 to {MAX_IMAGE_SIZE}, got {size!r:.40}"
        )
    if not isinstance(payload.get("model_name"), str):
        raise CheckpointError(f"{path}: no 'model_name'")
    _input_config(path, payload)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")


def _input_config(path: Path, payload: dict) -> InputConfig:
    """The ``preprocess`` settings (absent: none); ``CheckpointError`` for settings this code does not know."""
    try:
        return InputConfig.model_validate(payload.get("preprocess", {}))
    except ValidationError as error:
        first = error.errors()[0]
        where = "".join(f".{part}" for part in first["loc"])
        raise CheckpointError(f"{path}: 'preprocess{where}': {first['msg']}") from None


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model (no pretrained download or weight file needed) in eval mode on ``device``."""
    payload = read_checkpoint(path)
    name, classes = payload["model_name"], payload["classes"]
    try:
        model = build_model(name, num_classes=len(classes), pretrained=False)
        model.load_state_dict(payload["state_dict"], strict=True)
    except ModelError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except RuntimeError as error:  # missing, unexpected or mis-shaped weights
        first = str(error).splitlines()[1:2] or [str(error)]
        raise CheckpointError(
            f"{path}: its weights do not fit a {name} with {len(classes)} classes ({first[0].strip()[:160]})"
        ) from None
    model.to(device).eval()
    meta = CheckpointMeta(
        model_name=payload["model_name"],
        classes=list(payload["classes"]),
        image_size=payload["image_size"],
        params=payload.get("params", {}),
        data_version=payload.get("data_version", "unknown"),
        extra=payload.get("extra", {}),
        preprocess=_input_config(path, payload),
    )
    return model, meta
