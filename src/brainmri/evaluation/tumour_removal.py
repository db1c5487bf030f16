"""The tumour-removal test: does the model still call a test slice a tumour once its tumour is gone?

Each test tumour slice with a known tumour region (mask or box) that ``brainmri.synthetic.contralateral.heal``
can mirror is scored twice, as it is and with its tumour replaced by the other hemisphere's tissue. A model that
reads the tumour calls most healed slices ``no_tumor``; a model that has learnt the look of the source (every
contrast-enhanced T1 slice in the training data is a tumour) keeps calling them tumours. Accuracy on a split of
the same sources cannot tell the two apart; this can, without any external data.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from PIL import Image

from ..core.imaging import read_grey_png
from ..core.preprocess import prepare_grey
from ..model.checkpoint import CheckpointMeta
from ..model.inference import logits_and_features
from ..synthetic.contralateral import HEALED, box_of_mask, heal


def tumour_box(mask_path: str, box: str) -> tuple[float, float, float, float] | None:
    """A row's tumour region as a YOLO box ``(cx, cy, w, h)``: its ``box``, else the box around its mask."""
    if box:
        cx, cy, w, h = (float(value) for value in box.split())
        return cx, cy, w, h
    if mask_path:
        with Image.open(mask_path) as mask:
            return box_of_mask(np.asarray(mask.convert("L")) > 127)
    return None


def _text(value) -> str:
    """A table cell as text; an empty cell (``""``, or NaN where the table was read with NA parsing) is ``""``."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def tumour_removal(model, meta: CheckpointMeta, rows: pd.DataFrame) -> dict:
    """How many test tumour slices could be healed, why the others could not, and the share of them the model
    calls ``no_tumor`` before and after healing (``None`` when none could be healed)."""
    no_tumour = list(meta.classes).index("no_tumor")
    tumours = rows[rows["label"] != "no_tumor"]
    blank = pd.Series("", index=tumours.index)
    column = {name: tumours[name] if name in tumours else blank for name in ("mask_path", "box")}
    originals, healed, outcome = [], [], Counter()
    for path, mask_path, box in zip(tumours["path"], column["mask_path"], column["box"], strict=True):
        region = tumour_box(_text(mask_path), _text(box))
        if region is None:
            outcome["no tumour region known"] += 1
            continue
        pixels = read_grey_png(path)
        made = heal(pixels, region)
        outcome[made.reason.split(" (")[0]] += 1
        if made.image is not None:
            originals.append(pixels)
            healed.append(made.image)
    result = {
        "tumour_slices": len(tumours),
        "healed": outcome.pop(HEALED, 0),
        "not_healed": dict(sorted(outcome.items())),
        "no_tumour_before": None,
        "no_tumour_after": None,
    }
    if healed:
        for key, images in (("no_tumour_before", originals), ("no_tumour_after", healed)):
            prepared = [prepare_grey(image, meta.image_size, meta.preprocess) for image in images]
            logits, _ = logits_and_features(model, prepared, meta.image_size)
            result[key] = round(float((logits.argmax(axis=1) == no_tumour).mean()), 4)
    return result
