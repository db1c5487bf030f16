"""The tumour-removal test of the evaluate stage (brainmri.evaluation.tumour_removal)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainmri.core.imaging import read_grey_png
from brainmri.core.preprocess import prepare_grey
from brainmri.evaluation.tumour_removal import tumour_box, tumour_removal
from brainmri.model.checkpoint import load_checkpoint
from brainmri.model.inference import logits_and_features
from brainmri.synthetic.contralateral import heal
from conftest import CLASSES, symmetric_head, untrained_checkpoint, with_tumour, write_grey_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tumour_box_reads_a_box_or_the_box_around_a_mask(tmp_path):
    mask = np.zeros((20, 40), dtype=np.uint8)
    mask[5:15, 10:30] = 255
    mask_path = str(write_grey_png(tmp_path / "mask.png", mask))
    assert tumour_box("", "0.5 0.25 0.1 0.2") == (0.5, 0.25, 0.1, 0.2)
    assert tumour_box(mask_path, "") == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert tumour_box("", "") is None


def test_tumour_removal_counts_every_tumour_slice_and_scores_before_and_after(tmp_path):
    healthy = symmetric_head()
    rows = []

    def add(name: str, label: str, image: np.ndarray, box: tuple | None = None, mask: np.ndarray | None = None):
        path = str(write_grey_png(tmp_path / f"{name}.png", image))
        mask_path = str(write_grey_png(tmp_path / f"{name}-mask.png", mask)) if mask is not None else ""
        box_text = " ".join(str(v) for v in box) if box else ""
        rows.append({"path": path, "label": label, "mask_path": mask_path, "box": box_text})

    left, left_box = with_tumour(healthy, (120, 80))
    right, _ = with_tumour(healthy, (100, 170), radius=10)
    right_mask = ((right != healthy) * 255).astype(np.uint8)  # the disc itself
    middle, middle_box = with_tumour(healthy, (120, 128))
    add("left", "glioma", left, box=left_box)
    add("right", "meningioma", right, mask=right_mask)
    add("middle", "pituitary", middle, box=middle_box)
    add("unknown", "glioma", left)  # no mask, no box
    add("free", "no_tumor", healthy)
    checkpoint = untrained_checkpoint(tmp_path / "model.pt", image_size=32)
    model, meta = load_checkpoint(checkpoint)

    result = tumour_removal(model, meta, pd.DataFrame(rows))

    assert result["tumour_slices"] == 4 and result["healed"] == 2
    assert result["not_healed"] == {"no tumour region known": 1, "tumour box crosses the midline": 1}
    # the rates are the model's own calls on the two slices, as they are and healed
    originals = [read_grey_png(rows[k]["path"]) for k in (0, 1)]
    healed = [heal(originals[0], left_box).image, heal(originals[1], tumour_box(rows[1]["mask_path"], "")).image]
    no_tumour = CLASSES.index("no_tumor")
    for key, images in (("no_tumour_before", originals), ("no_tumour_after", healed)):
        logits, _ = logits_and_features(model, [prepare_grey(i, 32) for i in images], 32)
        assert result[key] == round(float((logits.argmax(axis=1) == no_tumour).mean()), 4)


def test_tumour_removal_without_a_healable_slice_reports_none(tmp_path):
    path = str(write_grey_png(tmp_path / "blank.png", np.zeros((64, 64), dtype=np.uint8)))
    # no mask_path column, and an empty box read as NaN
    table = pd.DataFrame(
        [{"path": path, "label": "glioma", "box": "0.5 0.5 0.2 0.2"}, {"path": path, "label": "glioma", "box": np.nan}]
    )
    model, meta = load_checkpoint(untrained_checkpoint(tmp_path / "model.pt"))
    result = tumour_removal(model, meta, table)
    assert result == {
        "tumour_slices": 2,
        "healed": 0,
        "not_healed": {"no head found": 1, "no tumour region known": 1},
        "no_tumour_before": None,
        "no_tumour_after": None,
    }
