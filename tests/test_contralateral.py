"""Tumour-free slices from tumour slices by contralateral mirroring (brainmri.synthetic.contralateral)."""

import numpy as np
import pytest

from brainmri.synthetic.contralateral import box_of_mask, heal, mirror, sham
from conftest import SYMMETRIC_SIDE as SIZE
from conftest import symmetric_head, with_tumour


def test_mirror_reflects_about_the_given_column():
    image = np.arange(12, dtype=np.uint8).reshape(2, 6)
    assert mirror(image, 5).tolist() == [[5, 4, 3, 2, 1, 0], [11, 10, 9, 8, 7, 6]]
    # about column 2 (axis2 = 4): columns 0..4 map to 4..0, columns 5 on come from outside, 0
    assert mirror(image, 4)[0].tolist() == [4, 3, 2, 1, 0, 0]


def test_heal_replaces_the_tumour_with_the_other_side():
    healthy = symmetric_head()
    sick, box = with_tumour(healthy, (120, 175))
    result = heal(sick, box)
    assert result.reason == "healed", result.reason
    assert result.symmetry > 0.9
    disc = np.abs(sick.astype(int) - healthy.astype(int)) > 0
    # the tumour is gone: inside the disc the healed image is the healthy one, to rounding
    assert np.abs(result.image[disc].astype(int) - healthy[disc].astype(int)).max() <= 2
    # away from the grown box nothing changes
    far = np.ones_like(disc)
    far[60:180, 120:240] = False
    assert np.array_equal(result.image[far], sick[far])


def test_heal_refuses_a_tumour_across_the_midline():
    sick, box = with_tumour(symmetric_head(), (120, 128))
    result = heal(sick, box)
    assert result.image is None
    assert result.reason == "tumour box crosses the midline"


def test_heal_refuses_a_slice_that_is_not_left_right_symmetric():
    # a 'sagittal' head: the outline bulges on one side (the face), so its mirror does not overlap it
    image = symmetric_head()
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    image[np.hypot((rows - 150) / 60.0, (columns - 60) / 50.0) < 1] = 120
    image[:, :40] = 0
    image[np.hypot((rows - 200) / 50.0, (columns - 70) / 45.0) < 1] = 150
    sick, box = with_tumour(image, (100, 175))
    result = heal(sick, box)
    assert result.image is None
    assert "not left-right symmetric" in result.reason


def test_heal_refuses_a_blank_image():
    result = heal(np.zeros((64, 64), dtype=np.uint8), (0.5, 0.5, 0.1, 0.1))
    assert (result.image, result.reason) == (None, "no head found")


def test_sham_keeps_the_tumour_and_pastes_elsewhere_reproducibly():
    noise = np.random.default_rng(0).integers(-3, 4, (SIZE, SIZE))  # real sides differ in noise
    noisy = np.clip(symmetric_head().astype(int) + noise, 0, 255).astype(np.uint8)
    sick, box = with_tumour(noisy, (120, 175))
    first = sham(sick, box, np.random.default_rng(3))
    again = sham(sick, box, np.random.default_rng(3))
    assert first.reason == "sham"
    assert np.array_equal(first.image, again.image)
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    disc = np.hypot(rows - 120, columns - 175) <= 14
    assert np.array_equal(first.image[disc], sick[disc])  # the tumour is untouched
    changed = first.image != sick
    assert changed.any()
    # neither the pasted region nor where it came from touches the tumour or its mirror
    assert not (changed & (np.abs(columns - 80.5) < 20) & (np.abs(rows - 120) < 20)).any()


@pytest.mark.parametrize("centre", [(70, 170), (170, 90)])
def test_heal_works_on_either_side(centre):
    healthy = symmetric_head()
    sick, box = with_tumour(healthy, centre, radius=10)
    result = heal(sick, box)
    assert result.reason == "healed"
    disc = sick != healthy
    assert np.abs(result.image[disc].astype(int) - healthy[disc].astype(int)).max() <= 2


def test_box_of_mask_is_the_normalised_box_around_the_mask():
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:6, 4:8] = True  # rows 2-5, columns 4-7
    assert box_of_mask(mask) == pytest.approx((6 / 20, 4 / 10, 4 / 20, 4 / 10))
    assert box_of_mask(np.zeros((4, 4), dtype=bool)) is None
