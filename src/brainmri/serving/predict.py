"""Predict: class probabilities for new images, with the checkpoint's own preprocessing.

Inputs may be image files, folders (searched recursively) or zip archives.
Every input is decoded by the same validating decoder as the merge stage
(``brainmri.core.imaging``: grey, RGB, RGBA, 16-bit and any size become 8-bit
grey), so an unreadable file is reported with its reason and skipped while
the rest are still predicted.

With an out-of-distribution check (``brainmri.model.ood``, fitted by the evaluate
stage), an image unlike the training MRI gets ``not a brain MRI`` and its
score instead of a class. With the evaluate stage's temperature
(``brainmri.model.temperature``), the probabilities are calibrated ones. Images
are processed ``batch_size`` at a time, so a large folder never sits in
memory decoded.

Inputs are untrusted: a plain file larger than a zip member may be
(``max_member_bytes``) is refused before it is read, an unreadable one is
skipped with its reason, and the output table is checked before any work
(not a folder or device, not one of the inputs or the model, writable) and
written atomically. The table lists skipped files too (an ``error`` column).
A run in which nothing could be read is an error.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.hashing import file_digest
from ..core.imaging import IMAGE_SUFFIXES, BadImage, decode_image
from ..core.inputs import INPUT_LIMITS, iter_inputs
from ..core.preprocess import normalise_input
from ..errors import UserError
from ..model.checkpoint import load_checkpoint
from ..model.inference import check_features, logits_and_features
from ..model.ood import NOT_MRI, load_ood_check
from ..model.temperature import Temperature, softmax


class PredictError(UserError, ValueError):
    """A predict run that cannot give a useful answer (bad --out, nothing readable); one line for a person."""


def decoded_batches(
    inputs: list[Path], batch_size: int, skipped: list[dict]
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Batches of ``(names, grey images)``; every input that cannot be used is appended to ``skipped`` with its
    reason."""
    names, images = [], []
    for name, data, error in iter_inputs(inputs):
        if data is not None:
            try:
                images.append(decode_image(data, name, INPUT_LIMITS))
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
    protected = {
        "an input": inputs,
        "the checkpoint": [checkpoint],
        "the --ood file": [ood],
        "the --temperature file": [temperature],
    }
    staged = _prepare_output(out, protected)
    try:
        result = _predict(
            inputs, checkpoint, staged, out.suffix.lower() == ".json", batch_size, ood, temperature, gradcam_dir
        )
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return {**result, "out": str(out)}


def _prepare_output(out: Path, protected: dict[str, list[Path | None]]) -> Path:
    """Check ``out`` before any work and return an empty temporary file beside it, renamed onto it at the end.

    Refused: an existing folder, device or other non-regular file (``/dev/full``),
    a path that is one of the inputs (or an image inside an input folder), the
    checkpoint or the fitted files, and a folder where no file can be created.
    """
    if out.exists() and not out.is_file():
        raise PredictError(
            f"--out {out}: exists and is not a regular file (a folder or a device); give a .csv or .json file path"
        )
    target = out.resolve()
    for role, paths in protected.items():
        if any(path is not None and _covers(path, target) for path in paths):
            raise PredictError(f"--out {out} is {role}; refusing to overwrite it")
    staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.open("w").close()
    except OSError as error:
        raise PredictError(f"--out {out}: cannot write there ({error.strerror or error}: {error.filename})") from None
    return staged


def _covers(path: Path, target: Path) -> bool:
    """Whether writing ``target`` would overwrite ``path`` or an image that reading the folder ``path`` would find."""
    if not path.exists():
        return False
    if path.is_dir():
        return path.resolve() in target.parents and target.suffix.lower() in IMAGE_SUFFIXES
    return path.resolve() == target


def _predict(
    inputs: list[Path],
    checkpoint: Path,
    out: Path,
    as_json: bool,
    batch_size: int,
    ood: Path | None,
    temperature: Path | None,
    gradcam_dir: Path | None,
) -> dict:
    """The work of ``predict_paths``, writing the table to ``out`` (a temporary file)."""
    model, meta = load_checkpoint(checkpoint)
    check = load_ood_check(ood, checkpoint) if ood is not None else None
    scale = Temperature.load(temperature, file_digest(checkpoint)).value if temperature is not None else 1.0
    classes = list(meta.classes)
    columns = [
        "file",
        "predicted",
        *(["ood_score"] if check else []),
        *[f"p_{c}" for c in classes],
        *(["gradcam"] if gradcam_dir else []),
    ]
    rows, skipped = [], []
    for names, decoded in decoded_batches(inputs, batch_size, skipped):
        images = [normalise_input(image, meta.preprocess) for image in decoded]  # the checkpoint's crop and intensity
        logits, features = logits_and_features(model, images, meta.image_size, batch_size)
        proba = softmax(logits, scale)
        scores = (
            check.score(check_features(model, images, meta.image_size, check.view, features, batch_size))
            if check
            else None
        )
        rejected = check.rejects(scores) if check else np.zeros(len(names), dtype=bool)
        batch_rows = []
        for k, name in enumerate(names):
            row = {"file": name, "predicted": NOT_MRI if rejected[k] else classes[int(proba[k].argmax())]}
            if check:
                row["ood_score"] = round(float(scores[k]), 4)
            row.update({f"p_{c}": None if rejected[k] else round(float(proba[k, j]), 6) for j, c in enumerate(classes)})
            batch_rows.append(row)
        if gradcam_dir is not None:
            _write_overlays(
                model, meta.image_size, images, proba, rejected, batch_rows, gradcam_dir, first_index=len(rows)
            )
        rows.extend(batch_rows)
    if not rows:
        first = f" (first: {skipped[0]['file']}: {skipped[0]['error']})" if skipped else ""
        raise PredictError(
            f"nothing readable to predict in {', '.join(map(str, inputs))}: {len(skipped)} file(s) skipped{first}"
        )
    if as_json:
        out.write_text(json.dumps({"predictions": rows, "skipped": skipped}, indent=2) + "\n")
    else:
        table = pd.DataFrame(
            rows + [{"file": s["file"], "error": s["error"]} for s in skipped], columns=[*columns, "error"]
        )
        table.to_csv(out, index=False)
    not_mri = sum(row["predicted"] == NOT_MRI for row in rows)
    return {"predicted": len(rows) - not_mri, "not_brain_mri": not_mri, "skipped": len(skipped)}


def _write_overlays(
    model,
    image_size: int,
    images: list[np.ndarray],
    proba: np.ndarray,
    rejected: np.ndarray,
    rows: list[dict],
    gradcam_dir: Path,
    first_index: int,
) -> None:
    """Grad-CAM of the predicted class over each accepted image; rejected images have no class to explain."""
    from ..model.explain import gradcam_images, save_overlay

    accepted = [k for k in range(len(images)) if not rejected[k]]
    cams, _ = gradcam_images(
        model, [images[k] for k in accepted], image_size, targets=[int(proba[k].argmax()) for k in accepted]
    )
    for k, cam in zip(accepted, cams, strict=True):
        path = gradcam_dir / _overlay_name(first_index + k, rows[k]["file"])
        save_overlay(path, images[k], cam)
        rows[k]["gradcam"] = str(path)
    for k in range(len(rows)):
        rows[k].setdefault("gradcam", "")
