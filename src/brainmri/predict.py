"""Predict: class probabilities for new images, with the checkpoint's own preprocessing.

Inputs may be image files, folders (searched recursively) or zip archives.
Every input is decoded by the same validating decoder as the merge stage
(``brainmri.imaging``: grey, RGB, RGBA, 16-bit and any size become 8-bit
grey), so an unreadable file is reported with its reason and skipped while
the rest are still predicted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from .checkpoint import load_checkpoint
from .config import MergeConfig
from .imaging import BadImage, decode_image
from .inference import predict_proba
from .sources.safe_zip import BadArchive, MemberError, Refused, SafeZip

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm"}
LIMITS = MergeConfig(min_side=8)
"""Prediction accepts smaller images than the curated set (min side 8) but keeps the bomb guards."""


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


def predict_paths(inputs: list[Path], checkpoint: Path, out: Path, batch_size: int = 64) -> dict:
    """Predict every readable image under ``inputs``; write ``out`` (.csv or .json) and return counts."""
    model, meta = load_checkpoint(checkpoint)
    names, images, rejected = [], [], []
    for name, data, error in iter_inputs(inputs):
        if data is not None:
            try:
                images.append(decode_image(data, name, LIMITS))
                names.append(name)
                continue
            except BadImage as bad:
                error = bad.reason
        rejected.append({"file": name, "error": error})
    for row in rejected:
        print(f"skipped {row['file']}: {row['error']}")
    proba = predict_proba(model, images, meta.image_size, batch_size) if images else None
    rows = []
    for k, name in enumerate(names):
        probabilities = {f"p_{c}": round(float(proba[k, j]), 6) for j, c in enumerate(meta.classes)}
        rows.append({"file": name, "predicted": meta.classes[int(proba[k].argmax())], **probabilities})
    table = pd.DataFrame(rows, columns=["file", "predicted", *[f"p_{c}" for c in meta.classes]])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps({"predictions": rows, "skipped": rejected}, indent=2) + "\n")
    else:
        table.to_csv(out, index=False)
    return {"predicted": len(rows), "skipped": len(rejected), "out": str(out)}
