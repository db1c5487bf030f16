"""The calibration machinery on generated images and small hand-made tables (never the real archives)."""

import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainmri.config import DedupConfig
from conftest import blob_image
from dedup_threshold_study import (
    FAMILIES,
    Setting,
    archive_duplicates,
    breakdown,
    build_pairs,
    choose,
    figshare_number,
    fingerprint_refs,
    frame_spread,
    index_radius_limit,
    lookalike_pairs,
    pair_scores,
    sweep,
    transform,
)


def _head(rng: np.random.Generator, size: int = 96, inside: np.ndarray | None = None) -> np.ndarray:
    """A textured bright oval on a black canvas, like a slice: distinct per draw. Slices of one
    "patient" share the oval (``inside``) and differ inside it, as neighbouring slices do."""
    if inside is None:
        yy, xx = np.mgrid[:size, :size]
        inside = ((yy - size / 2) / (size * 0.4)) ** 2 + ((xx - size / 2) / (size * 0.35)) ** 2 < 1
    return np.where(inside, blob_image(rng, size), 0).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """A figshare-like zip (numbered files; each 'patient' is 3 consecutive, similar slices) and a
    Kaggle-like zip (class folders) holding a resized copy of one figshare image and an exact repeat."""
    folder = tmp_path_factory.mktemp("zips")
    rng = np.random.default_rng(11)
    figshare, kaggle = folder / "fig.zip", folder / "kag.zip"
    slices = {}
    with zipfile.ZipFile(figshare, "w") as zipped:
        number = 1
        for patient in range(8):
            base = _head(rng)
            for _ in range(3):
                pixels = ((base.astype(int) + _head(rng, inside=base > 0)) // 2).astype(np.uint8)
                slices[number] = pixels
                zipped.writestr(f"figshare-cheng2017/{patient % 3}/{number}.jpg", _jpeg(pixels))
                number += 1
    with zipfile.ZipFile(kaggle, "w") as zipped:
        for k, label in enumerate(["glioma", "meningioma", "notumor", "pituitary"] * 3):
            zipped.writestr(f"Training/{label}/Tr-{k:04d}.jpg", _jpeg(_head(rng, 80)))
        copy = np.asarray(Image.fromarray(slices[5]).resize((72, 72), Image.Resampling.BILINEAR))
        zipped.writestr("Training/glioma/Tr-copy.jpg", _jpeg(copy))
        zipped.writestr("Training/glioma/Tr-repeat.jpg", _jpeg(slices[7]))
    return figshare, kaggle


@pytest.mark.parametrize("family", FAMILIES)
def test_transforms_are_seeded_grey_copies(family):
    image = Image.fromarray(_head(np.random.default_rng(2)))
    first, note = transform(image, family, np.random.default_rng(9))
    again, _ = transform(image, family, np.random.default_rng(9))
    assert first.mode == "L" and note
    assert np.array_equal(np.asarray(first), np.asarray(again))
    if family in ("jpeg", "rgb", "intensity", "crop"):
        assert first.size == image.size
    with pytest.raises(ValueError, match="unknown transform"):
        transform(image, "rotate", np.random.default_rng(0))


def test_sweep_counts_precision_and_recall():
    scores = pd.DataFrame(
        {
            "frame": "core 0.8",
            "hash_size": 8,
            "thumb_size": 16,
            "duplicate": [True, True, True, True, False, False, False],
            "hamming": [0, 2, 6, 12, 2, 4, 20],
            "correlation": [0.99, 0.95, 0.91, 0.99, 0.93, 0.80, 0.99],
        }
    )
    table = sweep(scores, [4, 8], [0.9, 0.94]).set_index(["max_hamming", "min_correlation"])
    assert table.loc[(4, 0.9), ["tp", "fp"]].tolist() == [2, 1]  # (0, .99) (2, .95) | (2, .93)
    assert table.loc[(8, 0.9), "recall"] == 0.75 and table.loc[(8, 0.9), "precision"] == 0.75
    assert table.loc[(4, 0.94), "precision"] == 1.0 and table.loc[(4, 0.94), "recall"] == 0.5
    nothing = sweep(scores.assign(hamming=99), [4], [0.9]).iloc[0]
    assert nothing["precision"] == 1.0 and nothing["recall"] == 0.0


def test_choose_takes_the_widest_margin_within_the_index_radius():
    table = pd.DataFrame(
        {
            "frame": "core 0.8",
            "hash_size": 8,
            "thumb_size": 16,
            "max_hamming": [8, 8, 8, 6, 12],
            "min_correlation": [0.80, 0.90, 0.95, 0.90, 0.90],
            "precision": [0.991, 0.999, 1.000, 0.999, 1.000],
            "recall": [0.999, 0.990, 0.960, 0.990, 1.000],
        }
    )
    row = choose(table, 0.99, 0.98)
    # 0.80 is on the precision edge, 0.95 misses recall, radius 12 is beyond 64 / 8; 6 ties 8 and is cheaper
    assert (row["max_hamming"], row["min_correlation"]) == (6, 0.90)
    assert row["margin"] == pytest.approx(0.009)
    assert index_radius_limit(8) == 8 and index_radius_limit(16) == 32


def test_breakdown_by_family_and_kind():
    scores = pd.DataFrame(
        {
            "frame": "image",
            "hash_size": 8,
            "thumb_size": 16,
            "duplicate": [True, True, False, False],
            "kind": ["crop", "crop", "adjacent", "random"],
            "hamming": [2, 10, 0, 30],
            "correlation": [0.99, 0.99, 0.95, 0.1],
        }
    )
    row = pd.Series({"frame": "image", "hash_size": 8, "thumb_size": 16, "max_hamming": 8, "min_correlation": 0.9})
    out = breakdown(scores, row)
    assert out["recall_by_family"]["crop"] == {"pairs": 2, "found": 1, "recall": 0.5}
    assert out["false_positives_by_kind"]["adjacent"]["called_duplicate"] == 1
    assert out["false_positives_by_kind"]["random"]["called_duplicate"] == 0


def test_helpers():
    assert figshare_number("figshare-cheng2017/2/1867.jpg") == ("2", 1867)
    assert figshare_number("README.txt") is None
    assert frame_spread("image") is None and frame_spread(Setting(0.8, 8, 16).frame) == 0.8
    thumbs = np.eye(4, dtype=np.float32)
    thumbs[1] = [0.9, 0.1, 0, 0]
    thumbs[2] = [0.8, 0, 0.2, 0]
    classes = np.array(["a", "a", "a", "b"])
    assert lookalike_pairs(thumbs, classes, np.array([0]), 2, {(0, 1)}) == [(0, 2)]


def test_calibration_set_scores_copies_above_distinct_slices(archives):
    figshare, kaggle = archives
    pairs = build_pairs(
        figshare, kaggle, n_figshare=6, n_kaggle=4, seed=3, spreads=(0.8, None), random_pairs=10, workers=1
    )
    kinds = pairs.groupby(["duplicate", "kind"]).size()
    assert kinds[True].to_dict() == {f: 10 * (2 if f == "combo" else 1) for f in FAMILIES}
    assert {"adjacent", "lookalike", "random"} <= set(kinds[False].index)
    negatives = pairs[~pairs["duplicate"]]
    assert not (negatives["a"] == negatives["b"]).any()
    kaggle_random = negatives[negatives["a"].map(lambda r: r.archive == str(kaggle))]
    assert (
        kaggle_random["a"].map(lambda r: r.member.split("/")[1])
        != kaggle_random["b"].map(lambda r: r.member.split("/")[1])
    ).all()
    held = build_pairs(
        figshare,
        kaggle,
        6,
        4,
        seed=4,
        spreads=(0.8,),
        random_pairs=3,
        workers=1,
        exclude=frozenset(r.member for r in pairs["a"]),
    )
    assert not set(r.member for r in held.loc[held["duplicate"], "a"]) & set(
        r.member for r in pairs.loc[pairs["duplicate"], "a"]
    )

    settings = [Setting(0.8, 8, 16), Setting(None, 8, 16)]
    prints = fingerprint_refs(list(pairs["a"]) + list(pairs["b"]), settings, workers=1)
    assert prints[pairs["a"].iloc[0]]["sha256"] and ("thumb", None, 16) in prints[pairs["a"].iloc[0]]
    scores = pair_scores(pairs, prints, settings)
    assert len(scores) == 2 * len(pairs)
    core, whole = scores[scores["frame"] == "core 0.8"], scores[scores["frame"] == "image"]
    # slices of one patient share their outline: on the whole canvas some correlate more than cropped
    # copies do; in the core frame every copy correlates more than every distinct pair
    assert whole.loc[whole["duplicate"], "correlation"].min() < whole.loc[~whole["duplicate"], "correlation"].max()
    assert core.loc[core["duplicate"], "correlation"].min() > core.loc[~core["duplicate"], "correlation"].max()
    best = choose(sweep(core, [8], np.round(np.arange(0.5, 1.0, 0.01), 2)), 0.99, 0.98)
    assert best["precision"] == 1.0 and best["recall"] == 1.0


def test_archive_duplicates_counts_within_and_across(archives):
    figshare, kaggle = archives
    counts = archive_duplicates({"fig": figshare, "kag": kaggle}, DedupConfig(), workers=1)
    assert counts["pairs"] == {"exact": {"fig / kag": 1}, "near": {"fig / kag": 1}}  # the repeat; the resized copy
    assert counts["archives"]["fig"] == {
        "images": 24,
        "with_copy_in_same_archive": 0,
        "with_copy_in_other_archive": 2,
        "distinct_within_archive": 24,
    }
    assert counts["archives"]["kag"]["with_copy_in_other_archive"] == 2
    assert counts["images"] == 38 and counts["distinct_overall"] == 36
