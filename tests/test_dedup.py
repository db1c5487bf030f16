import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainmri.config import DedupConfig
from brainmri.dedup import deduplicate, is_conflict, write_outputs
from brainmri.features import hamming_pairs, pack_bits
from conftest import blob_image, write_grey_png


def _jpeg_resized(pixels: np.ndarray, size: int, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def _row(tmp_path, image_id, pixels, label, source, patient=""):
    import hashlib

    path = write_grey_png(tmp_path / f"{image_id}.png", pixels)
    return {
        "image_id": image_id, "path": str(path), "label": label, "source": source, "original_path": image_id,
        "patient_id": patient, "sha256": hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest(),
        "width": pixels.shape[1], "height": pixels.shape[0], "mask_path": "", "box": "",
    }


@pytest.fixture
def planted(tmp_path):
    """20 distinct images, plus: an exact copy, a resized JPEG copy in another source, and a conflicting copy."""
    rng = np.random.default_rng(0)
    classes = ["glioma", "meningioma", "no_tumor", "pituitary"]
    originals = [blob_image(rng, 96) for _ in range(20)]
    rows = [_row(tmp_path, f"a-{i:02d}", img, classes[i % 4], "a", patient=f"P{i}") for i, img in enumerate(originals)]
    rows.append(_row(tmp_path, "a-exact", originals[0], classes[0], "a"))
    rows.append(_row(tmp_path, "b-resized", _jpeg_resized(originals[1], 64, 75), classes[1], "b"))
    rows.append(_row(tmp_path, "b-conflict", _jpeg_resized(originals[2], 80, 90), "pituitary", "b"))
    return pd.DataFrame(rows)


def test_planted_duplicates_found_and_distinct_images_kept(planted):
    result, _ = deduplicate(planted, DedupConfig(), source_order=["a", "b"], workers=1)
    m = result.manifest.set_index("image_id")
    assert m.loc["a-exact", "cluster_id"] == m.loc["a-00", "cluster_id"]
    assert m.loc["b-resized", "cluster_id"] == m.loc["a-01", "cluster_id"]
    assert m.loc["b-conflict", "cluster_id"] == m.loc["a-02", "cluster_id"]
    # the 17 untouched originals are singletons and kept
    singles = [f"a-{i:02d}" for i in range(3, 20)]
    assert (m.loc[singles, "cluster_size"] == 1).all() and m.loc[singles, "kept"].all()
    # the kept copy carries the patient id and the higher resolution
    assert m.loc["a-00", "kept"] and not m.loc["a-exact", "kept"]
    assert m.loc["a-01", "kept"] and not m.loc["b-resized", "kept"]
    assert m.loc["b-resized", "drop_reason"] == "duplicate"
    # the conflicting cluster is dropped whole
    assert not m.loc[["a-02", "b-conflict"], "kept"].any()
    report = result.report
    assert report["label_conflicts"]["clusters"] == 1
    assert report["pairs"]["exact"]["total"] == 1 and report["pairs"]["near"]["across_sources"] == 2
    assert report["images_kept"] == 19


def test_keep_majority_keeps_one_of_the_larger_label(planted, tmp_path):
    extra = planted[planted.image_id == "a-02"].assign(image_id="c-02", source="c", path=lambda d: d.path)
    frame = pd.concat([planted, extra], ignore_index=True)
    result, _ = deduplicate(frame, DedupConfig(conflicts="keep_majority"), source_order=["a", "b", "c"], workers=1)
    m = result.manifest.set_index("image_id")
    assert m.loc["a-02", "kept"] and not m.loc["c-02", "kept"]
    assert m.loc["b-conflict", "drop_reason"] == "label conflict: minority label"


def test_outputs_are_written(planted, tmp_path):
    result, prints = deduplicate(planted, DedupConfig(), source_order=["a", "b"], workers=1)
    write_outputs(result, prints, tmp_path / "out", tmp_path / "metrics" / "dedup.json")
    for name in ("manifest.csv", "pairs.csv", "fingerprints.npz", "report.md", "largest_clusters.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "label conflict" in (tmp_path / "out" / "report.md").read_text().lower()


def test_conflict_rule():
    assert is_conflict({"glioma", "pituitary"})
    assert is_conflict({"tumor_unknown", "no_tumor"})
    assert not is_conflict({"tumor_unknown", "glioma"})
    assert not is_conflict({"glioma"})


def test_blocked_popcount_matches_brute_force():
    rng = np.random.default_rng(1)
    bits = rng.random((300, 256)) < 0.5
    bits[1] = bits[0]
    bits[2, :250] = bits[0, :250]
    packed = np.stack([pack_bits(b) for b in bits])
    i, j, d = hamming_pairs(packed, 100, block=64)
    brute = {(a, b) for a in range(300) for b in range(a + 1, 300) if (bits[a] != bits[b]).sum() <= 100}
    assert set(zip(i.tolist(), j.tolist())) == brute
    assert dict(zip(zip(i.tolist(), j.tolist()), d.tolist()))[(0, 1)] == 0
