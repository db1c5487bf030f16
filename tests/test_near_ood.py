"""The near-distribution inputs for the OOD check: CT windowing by hand, the generated set, the packaged real images."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from brainmri.synthetic.near_ood import (
    ACCEPTED_KINDS,
    CT_HU,
    CT_WINDOWS,
    near_mri_images,
    packaged_medical_images,
    window_hu,
)


def test_window_maps_hounsfield_units_to_grey_by_hand():
    """Brain window (level 40, width 80): 0 HU and below black, 40 HU mid-grey, 80 HU and above white."""
    assert window_hu(np.array([-1000, 0, 20, 40, 80, 1000]), 40, 80).tolist() == [0, 0, 64, 128, 255, 255]
    assert window_hu(np.array([-500, 1500]), *CT_WINDOWS["bone"]).tolist() == [0, 255]


def test_generated_set_is_grey_seeded_and_looks_like_ct():
    first, again, other = near_mri_images(5), near_mri_images(5), near_mri_images(6)
    assert [name for _, name, _ in first] == [name for _, name, _ in again]
    assert all(
        a.dtype == np.uint8 and a.ndim == 2 and np.array_equal(a, b)
        for (_, _, a), (_, _, b) in zip(first, again, strict=True)
    )
    assert any(not np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(first, other, strict=True)), (
        "the seed must matter"
    )
    kinds = [kind for kind, _, _ in first]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "ct_head_like_brain_window": 4,
        "ct_head_like_bone_window": 4,
        "ct_shepp_logan": 1,
        "mri_body_like": 4,
    }
    brain_window = {kind: image for kind, _, image in first}
    ct = brain_window["ct_head_like_brain_window"]
    assert ct[0, 0] <= 10 and ct.max() >= 250, "air black, bone saturated white in a brain window"
    bone = brain_window["ct_head_like_bone_window"]
    tissue = round((CT_HU["white"] + 500) / 2000 * 255)  # about 67: brain is flat dark grey in a bone window
    assert abs(int(np.median(bone[bone > 30])) - tissue) <= 12 and bone.max() >= 150
    assert not ACCEPTED_KINDS & set(kinds), "nothing generated is brain MRI"


def test_packaged_images_hold_real_ct_mri_and_brain_epi():
    pytest.importorskip("pydicom")
    pytest.importorskip("nibabel")
    samples = packaged_medical_images()
    kinds = [kind for kind, _, _ in samples]
    assert (
        kinds.count("ct_head") == 4
        and kinds.count("brain_mri_epi") == 7
        and "mri_body" in kinds
        and "ultrasound" in kinds
    )
    if importlib.util.find_spec("data_store") is not None:  # pydicom-data, a dev extra
        assert kinds.count("xray") == 2 and kinds.count("mri_body") == 2 and kinds.count("ct_body") == 2
    assert all(image.dtype == np.uint8 and image.ndim == 2 and image.std() > 5 for _, _, image in samples), (
        "decoded, not blank"
    )
    head_ct = {name: image for kind, name, image in samples if kind == "ct_head"}
    brain, bone = head_ct["pydicom:J2K_pixelrep_mismatch.dcm:brain"], head_ct["pydicom:J2K_pixelrep_mismatch.dcm:bone"]
    assert (brain == 255).mean() > (bone == 255).mean(), "a brain window saturates more of the slice than a bone window"


def test_radiographs_are_shown_as_a_viewer_shows_them():
    """pydicom-data's radiographs are MONOCHROME1 (low values white): inverted, so bone is bright, lungs dark."""
    pytest.importorskip("pydicom")
    pytest.importorskip("data_store")
    chest = {name: image for _, name, image in packaged_medical_images()}["pydicom:RG1_UNCR.dcm:auto"]
    height, width = chest.shape
    rows = slice(height * 3 // 10, height * 6 // 10)
    lungs = np.concatenate([chest[rows, width // 5 : width * 3 // 10], chest[rows, width * 7 // 10 : width * 4 // 5]])
    spine = chest[rows, width * 47 // 100 : width * 53 // 100]
    assert lungs.mean() + 40 < spine.mean()
