import numpy as np
import pandas as pd
import pytest

from brainmri.config import DedupConfig, SplitConfig
from brainmri.dedup import deduplicate
from brainmri.split import LeakageError, audit, check_leakage, make_split
from conftest import blob_image, write_grey_png

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


@pytest.fixture(scope="module")
def deduped(tmp_path_factory):
    """200 distinct images over 4 classes, 40 patients of 3 slices each plus 80 without patient id."""
    import hashlib

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    rows = []
    for i in range(200):
        pixels = blob_image(rng, 64)
        path = write_grey_png(folder / f"img{i:03d}.png", pixels)
        rows.append({
            "image_id": f"s-{i:03d}", "path": str(path), "label": CLASSES[i % 4], "source": "s" if (i // 3) % 5 else "t",
            "original_path": f"x/{i}", "patient_id": f"P{i // 3}" if i < 120 else "",
            "sha256": hashlib.sha256(pixels.tobytes()).hexdigest(), "width": 64, "height": 64, "mask_path": "", "box": "",
        })
    frame = pd.DataFrame(rows)
    # patients must share a label to be realistic
    frame.loc[frame.patient_id != "", "label"] = [CLASSES[int(p[1:]) % 4] for p in frame.loc[frame.patient_id != "", "patient_id"]]
    result, prints = deduplicate(frame, DedupConfig(), ["s", "t"], workers=1)
    return result.manifest, prints


def test_split_is_deterministic_stratified_and_grouped(deduped):
    manifest, prints = deduped
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(), seed=42)
    again, _ = make_split(manifest, prints, DedupConfig(), SplitConfig(), seed=42)
    pd.testing.assert_frame_equal(table, again)
    other, _ = make_split(manifest, prints, DedupConfig(), SplitConfig(), seed=7)
    assert not other["split"].equals(table["split"])
    sizes = report["sizes"]
    assert sum(sizes.values()) == 200
    assert abs(sizes["train"] / 200 - 0.70) < 0.04 and abs(sizes["test"] / 200 - 0.15) < 0.04
    for split in ("train", "val", "test"):
        for label, fraction in report["class_fraction"][split].items():
            assert abs(fraction - 0.25) < 0.06, (split, label, fraction)
    with_patient = table[table.patient_id != ""]
    assert (with_patient.groupby("patient_id")["split"].nunique() == 1).all()
    assert report["leakage"]["cross_split_duplicate_pairs"] == 0
    assert report["leakage"]["patients_in_several_splits"] == 0
    check_leakage(report)


def test_audit_catches_a_deliberately_leaked_split(deduped):
    manifest, prints = deduped
    table, _ = make_split(manifest, prints, DedupConfig(), SplitConfig(), seed=42)
    # leak 1: put one slice of a patient into another split
    leaked = table.copy()
    row = leaked.index[leaked.patient_id == "P0"][0]
    leaked.loc[row, "split"] = "test" if leaked.loc[row, "split"] != "test" else "train"
    result = audit(leaked, prints.subset(leaked["image_id"]), DedupConfig())
    assert result["patients_in_several_splits"] == 1
    # leak 2: a near-duplicate of a training image placed in test (same fingerprint, another id)
    train_id = table.loc[table.split == "train", "image_id"].iloc[0]
    twin = table[table.image_id == train_id].assign(image_id="zz-twin", split="test", patient_id="")
    leaked2 = pd.concat([table, twin], ignore_index=True)
    prints2 = prints.subset([*table["image_id"], train_id])
    result2 = audit(leaked2, prints2, DedupConfig())
    assert result2["cross_split_duplicate_pairs"] == 1
    with pytest.raises(LeakageError, match="1 duplicate pair"):
        check_leakage({"leakage": result2})


def test_similar_slices_are_grouped(deduped, tmp_path):
    manifest, prints = deduped
    every_pair = dict(group_max_hamming=prints.hashes.shape[1] * 64)
    _, loose = make_split(manifest, prints, DedupConfig(), SplitConfig(group_correlation=0.0, **every_pair), seed=1)
    _, strict = make_split(manifest, prints, DedupConfig(), SplitConfig(group_correlation=None, **every_pair), seed=1)
    # 40 patients of 3 + 80 singles = 120 groups without similarity links; positive correlation links merge many
    assert strict["groups"] == 120
    assert loose["groups"] < 60


def test_grouped_stratified_folds(deduped):
    manifest, prints = deduped
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(folds=4), seed=3)
    assert (table.loc[table.split == "test", "fold"] == -1).all()
    folds = table.loc[table.split != "test", "fold"]
    assert sorted(folds.unique()) == [0, 1, 2, 3]
    assert (table[table.split != "test"].groupby("group")["fold"].nunique() == 1).all()
    assert max(report["folds"].values()) - min(v for k, v in report["folds"].items() if k >= 0) < 20


def test_leave_one_source_out(deduped):
    manifest, prints = deduped
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(holdout_source="t"), seed=3)
    assert (table.loc[table.source == "t", "split"] == "test").all()
    touching = table.groupby("group")["source"].transform(lambda s: (s == "t").any())
    assert (table.loc[~touching, "split"] != "test").all()  # only groups with a held-out image join it
    assert report["sizes"]["val"] > 0 and report["leakage"]["patients_in_several_splits"] == 0
