"""Predict: class probabilities for new images, with the checkpoint's own preprocessing.

Inputs may be image files, folders (searched recursively) or zip archives.
Every input is decoded by the same validating decoder as the merge stage
(``brainmri.imaging``: grey, RGB, RGBA, 16-bit and any size become 8-bit
grey), so an unreadable file is reported with its reason and skipped while
the rest are still predicted.

With an out-of-distribution check (``brainmri.ood``, fitted by the evaluate
stage), an image unlike the training MRI gets ``not a brain MRI`` and its
score instead of a class. With the evaluate stage's temperature
(``brainmri.temperature``), the probabilities are calibrated ones. Images
are processed ``batch_size`` at a time, so a large folder never sits in
memory decoded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import load_checkpoint
from .config import MergeConfig
from .imaging import BadImage, decode_image
from .inference import logits_and_features
from .ood import NOT_MRI, OODCheck, file_sha256
from .temperature import Temperature, softmax
from .sources.safe_zip import BadArchive, MemberError, Refused, SafeZip

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm"}
LIMITS = MergeConfig(min_side=8)
"""Prediction accepts smaller images than the curated set (min side 8) but keeps the bomb guards."""


class OODMismatch(ValueError):
    """The out-of-distribution check was fitted for another checkpoint; its threshold would mean nothing."""


def iter_inputs(inputs: list[Path]) -> Iterator[tuple[str, bytes | None, str]]:
    """Yield ``(name, bytes, error)`` for every image-like input; ``bytes`` is None when it cannot be read."""
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for file in files:
                yield str(file), file.read_bytes(), ""
        elif item.suffix.lower() == ".zip":
            yield from _zip_members(item)
        elif item.is_file():
            yield str(item), item.read_bytes(), ""
        else:
            yield str(item), None, "not found"


def _zip_members(path: Path) -> Iterator[tuple[str, bytes | None, str]]:
    try:
        archive = SafeZip(path, LIMITS.max_member_bytes)
    except BadArchive as error:
        yield str(path), None, str(error)
        return
    with archive:
        for member in archive.members():
            name = f"{path}/{member.name}"
            if isinstance(member, Refused):
                yield name, None, member.reason
            elif not member.is_dir and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                try:
                    yield name, archive.read(member.index), ""
                except MemberError as error:
                    yield name, None, str(error)


def decoded_batches(inputs: list[Path], batch_size: int, skipped: list[dict]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Batches of ``(names, grey images)``; every input that cannot be used is appended to ``skipped`` with its reason."""
    names, images = [], []
    for name, data, error in iter_inputs(inputs):
        if data is not None:
            try:
                images.append(decode_image(data, name, LIMITS))
                names.append(name)
            except BadImage as bad:
                error = bad.reason
        if error:
            skipped.append({"file": name, "error": error})
            print(f"skipped {name}: {error}")
        if len(images) == batch_size:
            yield names, images
            names, images = [], []
    if images:
        yield names, images


def load_ood_check(path: Path, checkpoint: Path) -> OODCheck:
    """Load an out-of-distribution check and make sure it was fitted for ``checkpoint`` (by file hash)."""
    try:
        check = OODCheck.load(path)
    except KeyError as missing:  # e.g. a penultimate-layer-only check from before the per-block one
        raise OODMismatch(f"{path} was written by another version of the check (no {missing}); rerun the evaluate stage") from None
    if check.checkpoint_sha256 != file_sha256(checkpoint):
        raise OODMismatch(
            f"{path} was fitted for another checkpoint than {checkpoint}; pass the --ood file the evaluate "
            "stage wrote for this model, or --no-ood"
        )
    return check


def _overlay_name(index: int, name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:80]
    return f"{index:05d}_{stem}.png"


def predict_paths(
    inputs: list[Path],
    checkpoint: Path,
    out: Path,
    batch_size: int = 64,
    *,
    ood: Path | None = None,
    temperature: Path | None = None,
    gradcam_dir: Path | None = None,
) -> dict:
    """Predict every readable image under ``inputs``; write ``out`` (.csv or .json) and return counts.

    ``ood``: an ``ood.npz`` from the evaluate stage; images it rejects get
    ``not a brain MRI`` and no probabilities. ``temperature``: the evaluate
    stage's ``temperature.json``, applied to the logits (none: the raw
    softmax). ``gradcam_dir``: write a Grad-CAM overlay of the predicted
    class for each accepted image there.
    """
    model, meta = load_checkpoint(checkpoint)
    check = load_ood_check(ood, checkpoint) if ood is not None else None
    scale = Temperature.load(temperature, file_sha256(checkpoint)).value if temperature is not None else 1.0
    classes = list(meta.classes)
    columns = ["file", "predicted", *(["ood_score"] if check else []), *[f"p_{c}" for c in classes], *(["gradcam"] if gradcam_dir else [])]
    rows, skipped = [], []
    for names, images in decoded_batches(inputs, batch_size, skipped):
        logits, features = logits_and_features(model, images, meta.image_size, batch_size)
        proba = softmax(logits, scale)
        scores = check.score(features) if check else None
        rejected = check.rejects(scores) if check else np.zeros(len(names), dtype=bool)
        batch_rows = []
        for k, name in enumerate(names):
            row = {"file": name, "predicted": NOT_MRI if rejected[k] else classes[int(proba[k].argmax())]}
            if check:
                row["ood_score"] = round(float(scores[k]), 4)
            row.update({f"p_{c}": None if rejected[k] else round(float(proba[k, j]), 6) for j, c in enumerate(classes)})
            batch_rows.append(row)
        if gradcam_dir is not None:
            _write_overlays(model, meta.image_size, images, proba, rejected, batch_rows, gradcam_dir, first_index=len(rows))
        rows.extend(batch_rows)
    table = pd.DataFrame(rows, columns=columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps({"predictions": rows, "skipped": skipped}, indent=2) + "\n")
    else:
        table.to_csv(out, index=False)
    not_mri = sum(row["predicted"] == NOT_MRI for row in rows)
    return {"predicted": len(rows) - not_mri, "not_brain_mri": not_mri, "skipped": len(skipped), "out": str(out)}


def _write_overlays(model, image_size: int, images: list[np.ndarray], proba: np.ndarray, rejected: np.ndarray, rows: list[dict], gradcam_dir: Path, first_index: int) -> None:
    """Grad-CAM of the predicted class over each accepted image; rejected images have no class to explain."""
    from .explain import gradcam_images, save_overlay

    accepted = [k for k in range(len(images)) if not rejected[k]]
    cams, _ = gradcam_images(model, [images[k] for k in accepted], image_size, targets=[int(proba[k].argmax()) for k in accepted])
    for k, cam in zip(accepted, cams):
        path = gradcam_dir / _overlay_name(first_index + k, rows[k]["file"])
        save_overlay(path, images[k], cam)
        rows[k]["gradcam"] = str(path)
    for k in range(len(rows)):
        rows[k].setdefault("gradcam", "")
