"""The out-of-distribution check: per-block Mahalanobis scores, the val-quantile threshold, saving, and the
non-MRI set."""

from __future__ import annotations

import numpy as np
import pytest

from brainmri.model.ood import (
    LayerGaussian,
    OODCheck,
    OODMismatch,
    detection_summary,
    fit_ood,
    load_ood_check,
    view_images,
)
from brainmri.synthetic.non_mri import non_mri_images


def clusters(rng: np.random.Generator, n: int, dims: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes in ``dims`` dimensions, correlated, with some dead (constant zero) features."""
    labels = np.arange(n) % 3
    centres = rng.normal(0, 4, (3, dims))
    mixing = rng.normal(0, 1, (dims, dims))
    features = centres[labels] + rng.normal(0, 1, (n, dims)) @ mixing
    features[:, :3] = 0.0  # dead ReLU units: a plain covariance would be singular
    return features, labels


def test_scores_separate_far_points_and_threshold_is_the_val_quantile():
    rng = np.random.default_rng(0)
    train, labels = clusters(rng, 300)
    val = train + rng.normal(0, 0.5, train.shape)  # in distribution, but not the points the means were fitted to
    check = fit_ood([train], labels, [val], quantile=0.95, checkpoint_sha256="abc")
    val_scores = check.score([val])
    assert check.threshold == pytest.approx(np.quantile(val_scores, 0.95, method="higher"))
    assert check.rejects(val_scores).mean() == pytest.approx(0.05, abs=0.01)
    assert val_scores.mean() == pytest.approx(0.0, abs=1e-9) and val_scores.std() == pytest.approx(
        1.0
    )  # standardised on val
    far = train[:50] + rng.normal(0, 30, (50, train.shape[1]))
    assert check.rejects(check.score([far])).mean() == 1.0
    assert np.isfinite(check.score([train])).all() and check.score([np.zeros((0, train.shape[1]))]).shape == (0,)


def test_an_image_far_in_one_block_only_is_rejected():
    """The point of the feature ensemble: a picture can sit near a class mean in the last block (where only
    the classes are told apart) and still be far from every MRI in an early block (texture, layout)."""
    rng = np.random.default_rng(1)
    early, labels = clusters(rng, 400, dims=8)
    late, _ = clusters(rng, 400, dims=30)
    val_early, val_late = early + rng.normal(0, 0.5, early.shape), late + rng.normal(0, 0.5, late.shape)
    check = fit_ood([early, late], labels, [val_early, val_late], quantile=0.99, checkpoint_sha256="")
    odd = [early[:20] + 40.0, late[:20]]  # far in the early block, a training point itself in the late one
    assert check.rejects(check.score(odd)).all()
    assert check.rejects(check.score([val_early, val_late])).mean() <= 0.011
    with pytest.raises(ValueError, match="2 feature blocks, got 1"):
        check.score([early])


def test_score_is_the_mean_standardised_distance_to_the_nearest_class_mean():
    block = LayerGaussian(means=np.array([[0.0, 0.0], [10.0, 0.0]]), precision=np.diag([1.0, 4.0]))
    points = np.array([[9.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    assert block.distance(points) == pytest.approx([1.0, 2.0, 5.0])
    other = LayerGaussian(means=np.zeros((1, 1)), precision=np.eye(1))
    check = OODCheck(
        (block, other),
        loc=np.array([1.0, 0.0]),
        scale=np.array([2.0, 1.0]),
        threshold=1.5,
        quantile=0.99,
        checkpoint_sha256="",
    )
    scores = check.score([points, np.array([[3.0], [0.0], [1.0]])])
    assert scores == pytest.approx([(0.0 + 3.0) / 2, (0.5 + 0.0) / 2, (2.0 + 1.0) / 2])
    assert check.rejects(scores).tolist() == [False, False, False] and check.rejects(np.array([1.6])).tolist() == [True]


def test_saved_check_loads_identically_and_bytes_are_reproducible(tmp_path):
    rng = np.random.default_rng(3)
    train, labels = clusters(rng, 90)
    blocks = [train[:, :7], train]
    check = fit_ood(blocks, labels, blocks, 0.99, "f" * 64)
    check.save(tmp_path / "a" / "ood.npz")
    check.save(tmp_path / "b.npz")
    assert (tmp_path / "a" / "ood.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = OODCheck.load(tmp_path / "b.npz")
    assert loaded.checkpoint_sha256 == "f" * 64 and loaded.threshold == check.threshold and loaded.quantile == 0.99
    assert len(loaded.layers) == 2 and np.array_equal(loaded.score(blocks), check.score(blocks))


def test_the_view_is_saved_and_a_file_from_before_views_reads_as_is(tmp_path):
    rng = np.random.default_rng(3)
    train, labels = clusters(rng, 90)
    fit_ood([train], labels, [train], 0.99, "f" * 64, view="stretched").save(tmp_path / "stretched.npz")
    assert OODCheck.load(tmp_path / "stretched.npz").view == "stretched"
    with np.load(tmp_path / "stretched.npz") as data:
        older = {key: data[key] for key in data.files if key != "view"}
    np.savez_compressed(tmp_path / "older.npz", **older)
    assert OODCheck.load(tmp_path / "older.npz").view == "as_is"
    np.savez_compressed(tmp_path / "sideways.npz", **older, view=np.str_("sideways"))
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(OODMismatch, match=r"sideways.npz: not an out-of-distribution check .*unknown view 'sideways'"):
        load_ood_check(tmp_path / "sideways.npz", tmp_path / "model.pt")


def test_the_stretched_view_resizes_then_maps_the_heads_percentiles_to_the_full_range():
    yy, xx = np.mgrid[:200, :200]
    head = (yy - 100) ** 2 + (xx - 100) ** 2 < 70**2
    rng = np.random.default_rng(0)
    dark = np.where(head, rng.integers(20, 60, (200, 200)), 2).astype(np.uint8)  # an under-exposed slice
    flat = np.full((50, 50), 7, np.uint8)  # no head to find: left as it is
    as_is = view_images([dark, flat], "as_is", 64)
    assert as_is[0] is dark and as_is[1] is flat
    stretched, unchanged = view_images([dark, flat], "stretched", 64)
    assert stretched.shape == (64, 64) and stretched.dtype == np.uint8
    assert stretched.max() == 255 and dark.max() < 60  # the head's 99th percentile and above reach white
    assert np.array_equal(unchanged, np.full((64, 64), 7, np.uint8))
    with pytest.raises(ValueError, match="unknown out-of-distribution view 'sideways'"):
        view_images([dark], "sideways", 64)


def test_a_check_with_unpaired_scales_is_refused_with_its_path(tmp_path):
    rng = np.random.default_rng(3)
    train, labels = clusters(rng, 90)
    blocks = [train[:, :7], train]
    fit_ood(blocks, labels, blocks, 0.99, "f" * 64).save(tmp_path / "ood.npz")
    with np.load(tmp_path / "ood.npz") as data:
        damaged = {key: data[key] for key in data.files}
    damaged["scale"] = damaged["scale"][:1]
    np.savez_compressed(tmp_path / "damaged.npz", **damaged)
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(OODMismatch, match=r"damaged.npz: not an out-of-distribution check .*1 scales for 2 feature"):
        load_ood_check(tmp_path / "damaged.npz", tmp_path / "model.pt")


def test_non_mri_images_are_grey_seeded_and_cover_every_kind():
    first = non_mri_images(seed=5)
    again = non_mri_images(seed=5)
    kinds = {kind for kind, _, _ in first}
    assert kinds == {"photo", "noise", "gradient", "screenshot", "chest_xray_like"}
    assert len({name for _, name, _ in first}) == len(first)
    for (_, _, image), (_, _, same) in zip(first, again, strict=True):
        assert image.ndim == 2 and image.dtype == np.uint8 and min(image.shape) >= 64
        assert np.array_equal(image, same)
    other = {name: image for _, name, image in non_mri_images(seed=6)}
    assert not np.array_equal(other["noise:0"], dict((n, i) for _, n, i in first)["noise:0"])


def test_detection_summary_per_kind():
    summary = detection_summary(["photo", "photo", "noise"], np.array([True, False, True]))
    assert summary == {
        "n": 3,
        "detection_rate": pytest.approx(2 / 3, abs=1e-4),
        "per_kind": {"noise": {"n": 1, "detection_rate": 1.0}, "photo": {"n": 2, "detection_rate": 0.5}},
    }
