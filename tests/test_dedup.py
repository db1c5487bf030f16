import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainmri.config import DedupConfig
from brainmri.dataset.dedup import deduplicate, is_conflict, write_outputs
from brainmri.dataset.fingerprints import (
    _chunk_plan,
    confirmed_pairs,
    core_frame,
    fingerprint,
    hamming_pairs,
    hamming_pairs_scan,
    pack_bits,
)
from conftest import blob_image, write_grey_png


def _jpeg_resized(pixels: np.ndarray, size: int, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def _row(tmp_path, image_id, pixels, label, source, patient=""):
    import hashlib

    path = write_grey_png(tmp_path / f"{image_id}.png", pixels)
    return {
        "image_id": image_id,
        "path": str(path),
        "label": label,
        "source": source,
        "original_path": image_id,
        "patient_id": patient,
        "sha256": hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest(),
        "width": pixels.shape[1],
        "height": pixels.shape[0],
        "mask_path": "",
        "box": "",
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


def _packed(bits: np.ndarray) -> np.ndarray:
    return np.stack([pack_bits(b) for b in bits])


def _brute_force(bits: np.ndarray, radius: int) -> set:
    n = len(bits)
    return {(a, b) for a in range(n) for b in range(a + 1, n) if (bits[a] != bits[b]).sum() <= radius}


def test_scan_matches_brute_force():
    rng = np.random.default_rng(1)
    bits = rng.random((300, 256)) < 0.5
    bits[1] = bits[0]
    bits[2, :250] = bits[0, :250]
    i, j, d = hamming_pairs_scan(_packed(bits), 100, block=64)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_force(bits, 100)
    assert dict(zip(zip(i.tolist(), j.tolist(), strict=True), d.tolist(), strict=True))[(0, 1)] == 0


@pytest.mark.parametrize(
    "n, nbits, radius",
    [(400, 64, 8), (400, 64, 0), (400, 64, 3), (300, 256, 40), (200, 100, 12), (60, 64, 64), (50, 16, 20)],
)
def test_index_returns_exactly_the_scan_pairs(n, nbits, radius):
    """Random hashes with planted near copies (0..radius+2 bits apart), repeated hashes and constant
    bits: the multi-index search must return the scan's pairs, distances and order, nothing more."""
    rng = np.random.default_rng(n + nbits + radius)
    bits = rng.random((n, nbits)) < 0.5
    bits[:, :3] = [True, False, True]  # bits that never vary are left out of the substrings
    for k in range(0, n // 2, 4):
        bits[k + 1] = bits[k]
        flips = rng.choice(nbits, min(nbits, int(rng.integers(0, radius + 3))), replace=False)
        bits[k + 1, flips] ^= True
    bits[n - 3 :] = bits[n - 4]  # a group of four identical hashes
    hashes = _packed(bits)
    got = hamming_pairs(hashes, radius)
    want = hamming_pairs_scan(hashes, radius)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(zip(got[0].tolist(), got[1].tolist(), strict=True)) == _brute_force(bits, radius)


def test_index_edge_cases():
    hashes = _packed(np.random.default_rng(0).random((50, 64)) < 0.5)
    small_batches = hamming_pairs(hashes, 30, batch=7)
    for a, b in zip(small_batches, hamming_pairs_scan(hashes, 30), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(len(x) == 0 for x in hamming_pairs(hashes[:1], 8))
    same = np.repeat(hashes[:1], 5, axis=0)
    i, j, d = hamming_pairs(same, 0)
    assert (
        list(zip(i.tolist(), j.tolist(), strict=True)) == [(a, b) for a in range(5) for b in range(a + 1, 5)]
        and not d.any()
    )


def test_index_searches_a_million_like_hashes_without_all_pairs():
    """The candidate plan for the working radius: 64-bit hashes at radius 8 are searched as 3 substrings
    probed to 2 bits, not by comparing every pair."""
    assert _chunk_plan(63, 8) == (3, 2)
    assert _chunk_plan(64, 4) == (3, 1)
    assert _chunk_plan(256, 32) == (11, 2)


def test_confirmed_pairs_in_small_batches_match(planted):
    _, prints = deduplicate(planted, DedupConfig(), source_order=["a", "b"], workers=1)
    loose = DedupConfig(max_hamming=64)  # every pair is a candidate
    whole = confirmed_pairs(prints, loose.max_hamming, 0.0)
    for a, b in zip(confirmed_pairs(prints, loose.max_hamming, 0.0, batch=7), whole, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(whole[0]) > 50 and (whole[3] >= 0).all()


def test_core_frame_ignores_padding_and_stretching():
    """A copy padded with black border, or squashed to another aspect ratio, has the same fingerprint."""
    rng = np.random.default_rng(5)
    pixels = np.zeros((160, 160), dtype=np.uint8)
    pixels[16:144, 24:136] = blob_image(rng, 128)[:, 8:120]
    image = Image.fromarray(pixels)
    padded = Image.fromarray(np.pad(pixels, ((30, 10), (5, 45))))
    squashed = image.resize((120, 160), Image.Resampling.BILINEAR)
    hash_a, thumb_a = fingerprint(image, 8, 16, 0.8)
    for copy in (padded, squashed):
        hash_b, thumb_b = fingerprint(copy, 8, 16, 0.8)
        assert np.bitwise_count(hash_a ^ hash_b).sum() <= 4
        assert float(thumb_a @ thumb_b) > 0.97
    # the whole-image frame sees the padding as a different picture
    assert float(fingerprint(image, 8, 16, None)[1] @ fingerprint(padded, 8, 16, None)[1]) < 0.9
    (left, top, right, bottom), background = core_frame(Image.fromarray(np.full((40, 60), 7, np.uint8)), 0.8)
    assert (left, top, right, bottom) == (0.0, 0.0, 60.0, 40.0) and background == 7  # flat: the whole canvas
