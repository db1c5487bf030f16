import numpy as np
import pandas as pd
import pytest

from brainmri.config import DedupConfig, SplitConfig
from brainmri.dataset.dedup import deduplicate
from brainmri.dataset.fingerprints import Fingerprints
from brainmri.dataset.linker import correlated_pairs, nearest_neighbour_pairs, thumbnail_vectors
from brainmri.dataset.split import LeakageError, audit, check_leakage, make_split
from conftest import CLASSES, blob_image, write_grey_png


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
        rows.append(
            {
                "image_id": f"s-{i:03d}",
                "path": str(path),
                "label": CLASSES[i % 4],
                "source": "s" if (i // 3) % 5 else "t",
                "original_path": f"x/{i}",
                "patient_id": f"P{i // 3}" if i < 120 else "",
                "sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                "width": 64,
                "height": 64,
                "mask_path": "",
                "box": "",
            }
        )
    frame = pd.DataFrame(rows)
    # patients must share a label to be realistic
    frame.loc[frame.patient_id != "", "label"] = [
        CLASSES[int(p[1:]) % 4] for p in frame.loc[frame.patient_id != "", "patient_id"]
    ]
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
    thumbs = thumbnail_vectors(leaked["path"].tolist())
    result = audit(leaked, prints.subset(leaked["image_id"]), thumbs, DedupConfig(), SplitConfig())
    assert result["patients_in_several_splits"] == 1
    assert result["patients_in_several_splits_by_source"] == {"t": 1}
    # leak 2: a near-duplicate of a training image placed in test (same fingerprint, another id)
    train_id = table.loc[table.split == "train", "image_id"].iloc[0]
    twin = table[table.image_id == train_id].assign(image_id="zz-twin", split="test", patient_id="")
    leaked2 = pd.concat([table, twin], ignore_index=True)
    prints2 = prints.subset([*table["image_id"], train_id])
    result2 = audit(leaked2, prints2, thumbnail_vectors(leaked2["path"].tolist()), DedupConfig(), SplitConfig())
    assert result2["cross_split_duplicate_pairs"] == 1
    assert result2["same_picture_pairs_across_splits"] == 1
    with pytest.raises(LeakageError, match="cross split duplicate pairs: 1"):
        check_leakage({"leakage": result2})


def test_similar_slices_are_grouped(deduped, tmp_path):
    manifest, prints = deduped
    every_pair = dict(group_max_hamming=prints.hashes.shape[1] * 64)
    _, loose = make_split(manifest, prints, DedupConfig(), SplitConfig(group_correlation=0.0, **every_pair), seed=1)
    no_other_links = dict(linker_correlation=None, same_picture_correlation=None)
    _, strict = make_split(
        manifest, prints, DedupConfig(), SplitConfig(group_correlation=None, **every_pair, **no_other_links), seed=1
    )
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


def test_train_only_source_goes_to_train_and_leaves_the_others_split_as_without_it(deduped):
    manifest, prints = deduped
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(train_only_sources=["t"]), seed=3)
    without = manifest[manifest["source"] != "t"]
    alone, _ = make_split(without, prints.subset(without["image_id"]), DedupConfig(), SplitConfig(), seed=3)
    touching = table.groupby("group")["source"].transform(lambda s: (s == "t").any())
    assert (table.loc[touching, "split"] == "train").all() and report["train_only_sources"] == ["t"]
    # similar slices join a few images of s to groups of t: those go to train with them; every other image of s
    # is where the split without t puts it
    linked = table[touching & (table["source"] == "s")]
    assert 0 < len(linked) < 10
    others = table[~touching].set_index("image_id")["split"].sort_index()
    assert others.equals(alone.set_index("image_id")["split"].drop(linked["image_id"]).sort_index())
    assert {"val", "test"} <= set(others) and report["leakage"]["patients_in_several_splits"] == 0


def test_train_only_source_with_a_held_out_one(deduped):
    manifest, prints = deduped
    cfg = SplitConfig(holdout_source="s", train_only_sources=["t"])
    table, _ = make_split(manifest, prints, DedupConfig(), cfg, seed=3)
    assert (table.loc[table.source == "s", "split"] == "test").all()
    t_only = table.groupby("group")["source"].transform(lambda s: set(s) == {"t"})
    assert (table.loc[t_only, "split"] == "train").all()


def test_nearest_neighbour_and_threshold_pairs_on_hand_made_vectors():
    angle = np.deg2rad([0, 10, 80, 90, 200])  # unit vectors: correlation = cos(angle difference)
    vectors = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    cells = np.array(["a", "a", "a", "a", "b"])
    i, j, c = nearest_neighbour_pairs(vectors, 0.9, cells)
    # 0 and 1 are each other's nearest (cos 10° = 0.985); 2 and 3 likewise; 4 is alone in its cell
    assert list(zip(i, j, strict=True)) == [(0, 1), (2, 3)] and np.allclose(c, np.cos(np.deg2rad(10)))
    assert list(zip(*nearest_neighbour_pairs(vectors, 0.99, cells)[:2], strict=True)) == []
    i, j, _ = correlated_pairs(vectors, 0.0, block=2)  # any pair within 90°, across cells too
    assert list(zip(i, j, strict=True)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    i, j, _ = correlated_pairs(vectors, -0.9, cells=cells)
    assert (cells[i] == cells[j]).all() and len(i) == 6


def _with_rows(manifest: pd.DataFrame, prints: Fingerprints, rows: list[dict], fingerprint_of: list[str]) -> tuple:
    """The manifest plus hand-made rows, each fingerprinted like an existing image."""
    extra = pd.DataFrame(rows)
    source = prints.subset(fingerprint_of)
    merged_prints = Fingerprints(
        np.concatenate([prints.image_ids, extra["image_id"].to_numpy()]),
        np.concatenate([prints.hashes, source.hashes]),
        np.concatenate([prints.thumbs, source.thumbs]),
    )
    return pd.concat([manifest, extra], ignore_index=True), merged_prints


def test_a_kept_copy_carries_the_patient_of_its_dropped_original(deduped):
    """A Kaggle copy of a figshare slice is kept, the original dropped: the copy still sits with that patient."""
    manifest, prints = deduped
    original = manifest[manifest.patient_id == "P4"].iloc[0]
    manifest = manifest.copy()
    manifest.loc[manifest.image_id == original.image_id, "kept"] = False
    copy = {**original.to_dict(), "image_id": "k-copy", "source": "k", "patient_id": "", "kept": True}
    manifest, prints = _with_rows(manifest, prints, [copy], [original.image_id])
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(), seed=42)
    row = table[table.image_id == "k-copy"].iloc[0]
    assert row.patients == "s:P4"
    assert table.loc[table.patients == "s:P4", "split"].nunique() == 1 and (table.patients == "s:P4").sum() == 3
    assert report["leakage"]["patients_in_several_splits"] == 0


def test_the_linker_joins_neighbouring_slices_without_ids_within_source_and_label(deduped, tmp_path):
    manifest, prints = deduped
    rng = np.random.default_rng(11)
    base = blob_image(rng, 64, centre=(32, 32), radius=12, noise=2)
    shifted = np.roll(base, 1, axis=1)  # a neighbouring slice: almost the same picture
    template = manifest[manifest.patient_id == ""].iloc[0].to_dict()
    rows = []
    for name, pixels, source, label in [
        ("n-a", base, "s", "glioma"),
        ("n-b", shifted, "s", "glioma"),  # linked
        ("n-c", np.roll(base, 2, axis=0), "t", "glioma"),  # other source: not linked by the linker
    ]:
        path = write_grey_png(tmp_path / f"{name}.png", pixels)
        rows.append(
            {
                **template,
                "image_id": name,
                "path": str(path),
                "source": source,
                "label": label,
                "cluster_id": f"c-{name}",
                "kept": True,
                "sha256": name,
            }
        )
    manifest, prints = _with_rows(manifest, prints, rows, [template["image_id"]] * 3)
    cfg = SplitConfig(same_picture_correlation=None, group_correlation=None)
    table, report = make_split(manifest, prints, DedupConfig(), cfg, seed=42)
    group = table.set_index("image_id")["group"]
    assert group["n-a"] == group["n-b"] and group["n-c"] != group["n-a"]
    assert report["links"]["linker"] >= 1 and report["leakage"]["linker_pairs_across_splits"] == 0
    leaked = table.copy()
    split_of_a = table.set_index("image_id").at["n-a", "split"]
    leaked.loc[leaked.image_id == "n-b", "split"] = "test" if split_of_a != "test" else "train"
    result = audit(
        leaked, prints.subset(leaked["image_id"]), thumbnail_vectors(leaked["path"].tolist()), DedupConfig(), cfg
    )
    assert result["linker_pairs_across_splits"] == 1
    off, _ = make_split(manifest, prints, DedupConfig(), cfg.model_copy(update={"linker_correlation": None}), seed=42)
    off_group = off.set_index("image_id")["group"]
    assert off_group["n-a"] != off_group["n-b"]


def test_patient_table_folds_become_the_fold_column(deduped):
    manifest, prints = deduped
    manifest = manifest.copy()
    manifest["patient_fold"] = [str(int(p[1:]) % 5 + 1) if p else "" for p in manifest["patient_id"]]
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(table_folds=True), seed=42)
    with_patient = table[table.patient_id != ""]
    assert (with_patient["fold"] == [int(p[1:]) % 5 for p in with_patient["patient_id"]]).all()
    assert (table.loc[table.patient_id == "", "fold"] == -1).all()
    assert sorted(report["folds"]) == [-1, 0, 1, 2, 3, 4]


def test_unknown_type_tumours_are_split_only_when_asked(deduped):
    manifest, prints = deduped
    manifest = manifest.copy()
    no_patient = manifest.index[manifest["patient_id"] == ""][:40]
    manifest.loc[no_patient, "label"] = "tumor_unknown"
    kept_unknown = int((manifest.loc[no_patient, "kept"].astype(bool)).sum())
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(), seed=42)
    assert "tumor_unknown" not in set(table["label"])
    assert report["excluded_not_a_class"] == {"tumor_unknown": kept_unknown}
    table, report = make_split(manifest, prints, DedupConfig(), SplitConfig(unknown_tumours=True), seed=42)
    unknown = table[table["label"] == "tumor_unknown"]
    assert len(unknown) == kept_unknown and report["excluded_not_a_class"] == {}
    assert set(unknown["split"]) == {"train", "val", "test"}  # stratified like a class
    check_leakage(report)
