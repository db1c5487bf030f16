"""The synthetic demo data: real layouts, valid MATLAB files, faults as recorded, classes told apart by shape."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage

from brainmri.config import SyntheticConfig
from brainmri.synthetic.archives import ARCHIVE_NAMES, TRUTH_NAME, write_demo_archives
from brainmri.synthetic.cohort import DISTINCT_BELOW, thumbnail
from brainmri.synthetic.phantom import patient_positions, random_anatomy, render_slice

SMALL = SyntheticConfig(seed=3, images_per_class=4, image_size=96)

KAGGLE_CLASS = r"(glioma|meningioma|notumor|pituitary)"
MEMBER_PATTERNS = {
    "figshare": r"\d+\.mat",
    "kaggle": rf"(Training/{KAGGLE_CLASS}/Tr|Testing/{KAGGLE_CLASS}/Te)-(gl|me|no|pi)_\d{{4}}\.jpg",
    "sartaj": r"Training/(glioma|meningioma|pituitary|no)_tumor/(gg|m|p|image) \(\d+\)\.jpg"
    r"|Testing/(glioma|meningioma|pituitary|no)_tumor/image\(\d+\)\.jpg",
    "br35h": r"yes/y\d+\.jpg|no/no\d+\.jpg",
}
FOLDER_LABELS = {
    "kaggle": {"glioma": "glioma", "meningioma": "meningioma", "notumor": "no_tumor", "pituitary": "pituitary"},
    "sartaj": {
        "glioma_tumor": "glioma",
        "meningioma_tumor": "meningioma",
        "no_tumor": "no_tumor",
        "pituitary_tumor": "pituitary",
    },
    "br35h": {"yes": "tumor_unknown", "no": "no_tumor"},
}
KAGGLE_CODES = {"gl": "glioma", "me": "meningioma", "no": "notumor", "pi": "pituitary"}
FIGSHARE_CLASSES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
FAULTS = {"truncated_jpeg", "empty_file", "not_an_image", "tiny_image", "unexpected_folder", "truncated_mat"}
MAT_FIELDS = {  # dtype, shape as HDF5 sees it (None: varies), MATLAB_class
    "image": (np.int16, (512, 512), b"int16"),
    "label": (np.float64, (1, 1), b"double"),
    "tumorMask": (np.uint8, (512, 512), b"logical"),
    "PID": (np.uint16, None, b"char"),
    "tumorBorder": (np.float64, None, b"double"),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict, dict[str, zipfile.ZipFile]]:
    out = tmp_path_factory.mktemp("demo")
    paths = write_demo_archives(out, SMALL)
    truth = json.loads((out / TRUTH_NAME).read_text())
    return paths, truth, {kind: zipfile.ZipFile(path) for kind, path in paths.items()}


def _files(archive: zipfile.ZipFile) -> list[str]:
    return [name for name in archive.namelist() if not name.endswith("/")]


def _read(archives: dict[str, zipfile.ZipFile], ref: dict) -> bytes:
    return archives[ref["archive"]].read(ref["member"])


def _key(ref: dict) -> tuple[str, str]:
    return ref["archive"], ref["member"]


def _read_mat(data: bytes) -> dict[str, np.ndarray]:
    """A reader of real figshare files: transpose what HDF5 returns (MATLAB is column-major)."""
    with h5py.File(io.BytesIO(data), "r") as mat:
        return {name: dataset[()].T for name, dataset in mat["cjdata"].items()}


def _grey(data: bytes, member: str) -> np.ndarray:
    if member.endswith(".mat"):
        image = _read_mat(data)["image"].astype(np.float32)
        return image / image.max()
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0


def _head(image: np.ndarray) -> np.ndarray:
    """The head: the filled region of signal clearly above the background noise (read at the frame's edge)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1)
    edge = np.concatenate([smooth[:3].ravel(), smooth[-3:].ravel(), smooth[:, :3].ravel(), smooth[:, -3:].ravel()])
    background = np.median(edge)
    return ndimage.binary_fill_holes(smooth > background + 0.1 * (np.percentile(smooth, 99) - background))


def test_returns_the_four_archives_with_their_names(demo) -> None:
    paths, truth, _ = demo
    assert {kind: path.name for kind, path in paths.items()} == ARCHIVE_NAMES
    assert truth["archives"] == ARCHIVE_NAMES
    assert truth["config"] == SMALL.model_dump()


def test_members_follow_the_real_layouts(demo) -> None:
    _, truth, archives = demo
    bad_folder = {b["member"] for b in truth["bad_files"] if b["fault"] == "unexpected_folder"}
    for kind, archive in archives.items():
        for name in _files(archive):
            if name not in bad_folder:
                assert re.fullmatch(MEMBER_PATTERNS[kind], name), (kind, name)
    numbers = sorted(int(name.removesuffix(".mat")) for name in _files(archives["figshare"]))
    assert numbers == list(range(1, len(numbers) + 1))
    assert all("/" not in name for name in archives["figshare"].namelist())
    assert "Training/" in archives["kaggle"].namelist()  # explicit directory entries, as in the real zip
    for name in _files(archives["kaggle"]):
        folder, file = name.split("/")[1], name.rsplit("/", 1)[1]
        if ".ipynb_checkpoints" not in name:
            assert KAGGLE_CODES[file[3:5]] == folder


def test_truth_lists_every_member_once(demo) -> None:
    _, truth, archives = demo
    listed = [_key(e) for e in truth["images"] + truth["bad_files"]]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted((kind, name) for kind, archive in archives.items() for name in _files(archive))


def test_labels_match_folders_and_mat_labels(demo) -> None:
    _, truth, archives = demo
    for entry in truth["images"]:
        if entry["archive"] == "figshare":
            mat = _read_mat(archives["figshare"].read(entry["member"]))
            assert FIGSHARE_CLASSES[int(mat["label"][0, 0])] == entry["label"]
        else:
            assert FOLDER_LABELS[entry["archive"]][entry["member"].split("/")[-2]] == entry["label"]
        if entry["label"] == "tumor_unknown":
            assert entry["true_class"] in ("glioma", "meningioma", "pituitary")
        elif entry["how"] is None:
            assert entry["true_class"] == entry["label"]
        assert (entry["box"] is None) == (entry["true_class"] == "no_tumor")
    per_source = defaultdict(set)
    for entry in truth["images"]:
        per_source[entry["archive"]].add(entry["label"])
    assert per_source["figshare"] == {"glioma", "meningioma", "pituitary"}
    assert per_source["kaggle"] == per_source["sartaj"] == {"glioma", "meningioma", "no_tumor", "pituitary"}
    assert per_source["br35h"] == {"tumor_unknown", "no_tumor"}


def test_jpegs_have_the_configured_size_and_mixed_modes(demo) -> None:
    _, truth, archives = demo
    modes = set()
    for entry in truth["images"]:
        if entry["archive"] == "figshare":
            continue
        image = Image.open(io.BytesIO(_read(archives, entry)))
        assert image.format == "JPEG"
        assert image.size == (SMALL.image_size, SMALL.image_size) == (entry["width"], entry["height"])
        modes.add(image.mode)
    assert modes == {"L", "RGB"}


def test_mat_files_are_matlab_v73_with_figshare_fields(demo, tmp_path: Path) -> None:
    _, truth, archives = demo
    figshare = [e for e in truth["images"] if e["archive"] == "figshare"]
    for entry in figshare:
        data = archives["figshare"].read(entry["member"])
        assert data[:10] == b"MATLAB 7.3" and data[124:128] == b"\x00\x02IM"
        assert b"HDF5 schema 1.00" in data[:116]
        path = tmp_path / "x.mat"
        path.write_bytes(data)
        assert scipy.io.matlab.matfile_version(str(path)) == (2, 0)
        with h5py.File(path, "r") as mat:
            assert mat.userblock_size == 512
            group = mat["cjdata"]
            assert group.attrs["MATLAB_class"] == b"struct"
            assert set(group) == set(MAT_FIELDS)
            for name, (dtype, shape, matlab_class) in MAT_FIELDS.items():
                assert group[name].dtype == dtype
                assert group[name].attrs["MATLAB_class"] == matlab_class
                if shape:
                    assert group[name].shape == shape
            assert group["PID"].shape[1] == 1 and group["tumorBorder"].shape[1] == 1  # MATLAB 1xK, transposed
            assert group["PID"].attrs["MATLAB_int_decode"] == 2
        mat = _read_mat(data)
        assert "".join(map(chr, mat["PID"].ravel())) == entry["pid"]
        image, mask = mat["image"], mat["tumorMask"].astype(bool)
        assert 0 <= image.min() and 255 < image.max() <= 2000  # MRI-like intensities, not 8-bit
        assert mask.any()
        assert not (mask & ~_head(image.astype(np.float32))).any()
        border = mat["tumorBorder"].ravel().reshape(-1, 2).astype(int) - 1
        assert ndimage.binary_dilation(mask, iterations=1)[border[:, 0], border[:, 1]].all()


def test_figshare_patients_have_several_consecutive_slices(demo) -> None:
    _, truth, _ = demo
    by_pid = defaultdict(list)
    for entry in truth["images"]:
        if entry["archive"] == "figshare" and entry["how"] is None:
            by_pid[entry["pid"]].append(entry)
    assert max(len(slices) for slices in by_pid.values()) >= 2
    for slices in by_pid.values():
        assert len({e["patient"] for e in slices}) == 1 and len({e["true_class"] for e in slices}) == 1
        assert len({e["phantom"] for e in slices}) == len(slices)
        numbers = sorted(int(e["member"].removesuffix(".mat")) for e in slices)
        assert numbers[-1] - numbers[0] <= len(slices) + 1  # consecutive, give or take a planted file


def test_same_config_gives_identical_bytes(demo, tmp_path: Path) -> None:
    paths, _, _ = demo
    again = write_demo_archives(tmp_path, SMALL)
    for kind, path in paths.items():
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(again[kind].read_bytes()).digest(), kind
    assert (paths["figshare"].parent / TRUTH_NAME).read_bytes() == (tmp_path / TRUTH_NAME).read_bytes()
    info = zipfile.ZipFile(paths["kaggle"]).infolist()
    assert {i.date_time for i in info} == {(1980, 1, 1, 0, 0, 0)}
    assert [i.filename for i in info] == sorted(i.filename for i in info)


def test_another_seed_gives_other_data(demo, tmp_path: Path) -> None:
    paths, _, _ = demo
    other = write_demo_archives(tmp_path, SMALL.model_copy(update={"seed": SMALL.seed + 1}))
    assert paths["sartaj"].read_bytes() != other["sartaj"].read_bytes()


def test_planted_copies_are_as_recorded(demo) -> None:
    _, truth, archives = demo
    phantom = {_key(e): e["phantom"] for e in truth["images"]}
    assert truth["exact_copies"] and truth["near_copies"] and truth["cross_source_copies"]
    assert {p["copy"]["archive"] for p in truth["exact_copies"]} == set(ARCHIVE_NAMES)
    for pair in truth["exact_copies"]:
        assert pair["original"]["archive"] == pair["copy"]["archive"]
        assert pair["original"]["member"] != pair["copy"]["member"]
        assert _read(archives, pair["original"]) == _read(archives, pair["copy"])
    for pair in truth["near_copies"]:
        assert _read(archives, pair["original"]) != _read(archives, pair["copy"])
        assert pair["original"]["member"].startswith("Training/") and pair["copy"]["member"].startswith("Testing/")
    for pair in truth["cross_source_copies"]:
        assert pair["original"]["archive"] != pair["copy"]["archive"] == "kaggle"
        assert (_read(archives, pair["original"]) == _read(archives, pair["copy"])) == (pair["how"] == "exact")
    assert {p["how"] for p in truth["cross_source_copies"]} == {"exact", "reencoded", "resized"}
    for pairs in (truth["exact_copies"], truth["near_copies"], truth["cross_source_copies"]):
        for pair in pairs:
            assert phantom[_key(pair["original"])] == phantom[_key(pair["copy"])]


def test_conflicting_labels_are_the_same_image_under_another_class(demo) -> None:
    _, truth, archives = demo
    conflicts = truth["conflicting_labels"]
    assert 2 <= len(conflicts) <= 3
    entries = {_key(e): e for e in truth["images"]}
    for pair in conflicts:
        original, copy = entries[_key(pair["original"])], entries[_key(pair["copy"])]
        assert original["label"] == pair["original"]["label"] != pair["copy"]["label"] == copy["label"]
        assert original["phantom"] == copy["phantom"] and copy["how"] in ("reencoded", "resized")
        a, b = (_grey(_read(archives, e), e["member"]) for e in (original, copy))
        assert thumbnail(a) @ thumbnail(b) > 0.99


def test_bad_files_are_broken_as_recorded(demo) -> None:
    _, truth, archives = demo
    bad = {b["fault"]: b for b in truth["bad_files"]}
    assert set(bad) == FAULTS

    def read(fault: str) -> bytes:
        return _read(archives, bad[fault])

    assert all(b["member"].endswith(".jpg") for b in truth["bad_files"] if b["fault"] != "truncated_mat")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(read("truncated_jpeg"))).load()
    for fault in ("truncated_jpeg", "truncated_mat"):
        whole = _read(archives, bad[fault]["copy_of"])
        assert read(fault) == whole[: len(read(fault))] and len(read(fault)) < len(whole)
    assert read("empty_file") == b""
    with pytest.raises(OSError):
        Image.open(io.BytesIO(read("not_an_image")))
    assert Image.open(io.BytesIO(read("tiny_image"))).size == (1, 1)
    checkpoint = bad["unexpected_folder"]
    assert checkpoint["archive"] == "kaggle"
    assert re.fullmatch(r"Testing/meningioma/\.ipynb_checkpoints/Te-me_\d{4}-checkpoint\.jpg", checkpoint["member"])
    assert read("unexpected_folder") == _read(archives, checkpoint["copy_of"])
    assert bad["truncated_mat"]["archive"] == "figshare"
    with pytest.raises(OSError):
        h5py.File(io.BytesIO(read("truncated_mat")), "r")


def test_copies_are_near_duplicates_and_distinct_phantoms_are_not(demo) -> None:
    """The contract the dedup stage relies on, with its default measure (32x32 correlation, 0.97)."""
    _, truth, archives = demo
    images = truth["images"]
    thumbs = np.stack([thumbnail(_grey(_read(archives, e), e["member"])) for e in images])
    correlation = thumbs @ thumbs.T
    phantoms = np.array([e["phantom"] for e in images])
    same = phantoms[:, None] == phantoms[None, :]
    upper = np.triu(np.ones_like(same), 1)
    assert correlation[same & upper].min() >= 0.97
    assert correlation[~same & upper].max() < 0.97


# --- the phantoms themselves ------------------------------------------------


def _slices(label: str, count: int = 12, size: int = 128):
    rng = np.random.default_rng(11)
    return [render_slice(rng, label, size, position=float(rng.uniform(-0.9, 0.9))) for _ in range(count)]


def test_render_slice_returns_float_image_and_bool_mask() -> None:
    for label in ("glioma", "meningioma", "no_tumor", "pituitary"):
        rendered = render_slice(np.random.default_rng(0), label, 80)
        assert rendered.image.dtype == np.float32 and rendered.image.shape == (80, 80)
        assert 0.0 <= rendered.image.min() and rendered.image.max() <= 1.0
        assert rendered.mask.dtype == bool and rendered.mask.any() == (label != "no_tumor")


def test_render_slice_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown phantom label"):
        render_slice(rng, "astrocytoma", 64)
    with pytest.raises(ValueError, match="not 'glioma'"):
        render_slice(rng, "glioma", 64, anatomy=random_anatomy(rng, "pituitary"))
    with pytest.raises(ValueError, match="position"):
        render_slice(rng, "glioma", 64, position=1.5)


def test_slices_of_one_patient_are_related_but_not_duplicates() -> None:
    rng = np.random.default_rng(5)
    anatomy = random_anatomy(rng, "meningioma")
    slices = [render_slice(rng, "meningioma", 128, anatomy, p) for p in patient_positions(rng, 4)]
    thumbs = np.stack([thumbnail(s.image) for s in slices])
    correlation = thumbs @ thumbs.T
    assert all(correlation[i, i + 1] > 0.7 for i in range(3))  # neighbouring slices look alike
    assert correlation[np.triu_indices(4, 1)].max() < DISTINCT_BELOW  # but are no near-duplicates
    assert len({int(s.mask.sum()) for s in slices}) == 4  # the tumour's cross-section changes


def test_pituitary_mass_is_small_low_and_on_the_midline() -> None:
    rng = np.random.default_rng(11)
    for _ in range(12):
        upright = replace(random_anatomy(rng, "pituitary"), rotation=0.0)  # so the midline is a column
        rendered = render_slice(rng, "pituitary", 128, upright, position=float(rng.uniform(-0.9, 0.9)))
        head_rows, head_cols = np.nonzero(_head(rendered.image))
        rows, cols = np.nonzero(rendered.mask)
        assert rows.mean() > head_rows.mean() + 0.12 * (head_rows.max() - head_rows.min())
        assert abs(cols.mean() - head_cols.mean()) < 0.05 * (head_cols.max() - head_cols.min())
        assert rendered.mask.mean() < 0.02


def test_meningioma_touches_the_skull() -> None:
    for rendered in _slices("meningioma"):
        depth = ndimage.distance_transform_edt(_head(rendered.image))
        head_radius = depth.max()
        assert depth[rendered.mask].min() < 0.25 * head_radius


def test_glioma_has_a_dark_core_inside_a_brighter_rim() -> None:
    for rendered in _slices("glioma"):
        depth = ndimage.distance_transform_edt(rendered.mask)
        inside = depth[rendered.mask]
        core = rendered.mask & (depth >= np.quantile(inside, 0.7))
        rim = rendered.mask & (depth <= np.quantile(inside, 0.3))
        assert rendered.image[core].mean() < 0.8 * rendered.image[rim].mean()


def test_global_brightness_does_not_give_the_class_away() -> None:
    means = {label: [s.image.mean() for s in _slices(label, count=16, size=64)] for label in ("glioma", "no_tumor")}
    low, high = sorted(means.values(), key=np.mean)
    assert max(low) > min(high)  # the ranges overlap
