"""Source readers, zip safety and image decoding, on tiny archives built here.

Each fault the readers must survive (empty, truncated, not-an-image, tiny,
pixel bomb, zip-slip, symlink, oversize, corrupt .mat, odd name encodings,
unknown folders) gets its own small case; every case checks that the fault
becomes a ``Rejected`` with the right category instead of a crash or a silent
drop.
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from brainmri.config import SOURCE_FORMATS, MergeConfig, SourceConfig
from brainmri.core.imaging import BadImage, decode_image, encode_png, int16_to_uint8, pixel_sha256
from brainmri.core.safe_zip import MemberError, SafeZip
from brainmri.dataset.sources import (
    FORMATS,
    MemberTask,
    Rejected,
    Skipped,
    SourceImage,
    plan_archive,
    read_archive,
)
from brainmri.dataset.sources.image_folder import parse_yolo_box
from conftest import write_zip

LIMITS = MergeConfig(min_side=8, max_pixels=1_000_000, max_member_bytes=100_000)
FOLDERS = SourceConfig(
    format="image_folder",
    files=[{"name": "folders.zip"}],
    labels={"glioma": "glioma", "notumor": "no_tumor"},
)
FIGSHARE = SourceConfig(
    format="figshare_mat",
    files=[{"name": "mats.zip"}],
    labels={"1": "meningioma", "2": "glioma", "3": "pituitary"},
)


# --- fixture builders ---------------------------------------------------------


def image_bytes(width: int = 48, height: int = 32, mode: str = "L", fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    pixels = rng.integers(0, 256, (height, width, *channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def mat_bytes(image: np.ndarray, label: float, pid: str | None = "P001", mask: np.ndarray | None = None) -> bytes:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 after a 512-byte userblock, 2-D arrays column-major."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=512) as handle:
        group = handle.create_group("cjdata")
        group["image"] = image.astype(np.int16).T
        group["label"] = np.array([[label]], dtype=np.float64)
        if pid is not None:
            group["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
        if mask is not None:
            group["tumorMask"] = mask.astype(np.uint8).T
    return buffer.getvalue()


def read_all(
    path: Path, source: SourceConfig = FOLDERS, limits: MergeConfig = LIMITS
) -> dict[str, SourceImage | Rejected]:
    return {item.original_path: item for item in read_archive(path, "src", source, limits)}


# --- imaging ---------------------------------------------------------------------


def test_grey_jpeg_decodes_at_original_size():
    pixels = decode_image(image_bytes(48, 32), "x.jpg", LIMITS)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 48)


def test_rgb_with_equal_channels_keeps_grey_values():
    grey = np.arange(64 * 40, dtype=np.uint32).reshape(40, 64).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(buffer, format="PNG")
    assert np.array_equal(decode_image(buffer.getvalue(), "x.png", LIMITS), grey)


def test_transparent_pixels_become_black_and_palette_decodes():
    rgba = np.full((16, 16, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:8, :, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    pixels = decode_image(buffer.getvalue(), "x.png", LIMITS)
    assert (pixels[:8] == 0).all() and (pixels[8:] == 200).all()
    palette = io.BytesIO()
    Image.fromarray(np.full((16, 16), 90, dtype=np.uint8)).convert("P").save(palette, format="PNG")
    assert (decode_image(palette.getvalue(), "p.png", LIMITS) == 90).all()


def test_sixteen_bit_png_is_windowed_to_full_range():
    wide = (np.arange(32 * 32, dtype=np.uint16) * 40).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    pixels = decode_image(buffer.getvalue(), "x.png", LIMITS)
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255
    assert np.array_equal(pixels, int16_to_uint8(wide))


def test_int16_window_clips_outliers_and_handles_flat_images():
    image = np.tile(np.arange(1000, dtype=np.int16), (10, 1))
    image[0, 0] = 30000  # one hot pixel must not squash the contrast of the rest
    out = int16_to_uint8(image)
    assert out[0, 0] == 255 and out[5, 500] in (127, 128) and out[5, 0] == 0
    assert not int16_to_uint8(np.full((8, 8), 700, dtype=np.int16)).any()
    sparse = np.zeros((100, 100), dtype=np.int16)
    sparse[0, :5] = 400  # the percentile window is empty: fall back to min..max
    assert int16_to_uint8(sparse)[0, 0] == 255


@pytest.mark.parametrize(
    ("data", "category"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a JPEG\n", "not an image"),
        (image_bytes(64, 64)[:300], "corrupt image"),  # truncated JPEG
        (image_bytes(1, 1, fmt="PNG"), "too small"),
        (b"P5\n2000 2000\n255\n" + bytes(10), "pixel bomb"),  # our header check, before any decoding
        (b"P5\n100000 100000\n255\n" + bytes(10), "pixel bomb"),  # Pillow's own DecompressionBombError
    ],
)
def test_bad_image_bytes_raise_one_line_reasons(data, category):
    with pytest.raises(BadImage) as error:
        decode_image(data, "a/b.jpg", LIMITS)
    assert error.value.reason.startswith(category + ":")
    assert "\n" not in error.value.reason and "a/b.jpg" in str(error.value)


def test_pillow_bomb_guard_is_a_reject_even_below_max_pixels(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImage, match="pixel bomb"):
        decode_image(image_bytes(64, 64, fmt="PNG"), "x.png", LIMITS)


def test_pixel_hash_covers_shape_and_survives_reencoding():
    pixels = decode_image(image_bytes(48, 32), "x.jpg", LIMITS)
    again = decode_image(encode_png(pixels), "x.png", LIMITS)
    assert pixel_sha256(again) == pixel_sha256(pixels)
    assert pixel_sha256(pixels.reshape(48, 32)) != pixel_sha256(pixels)
    assert encode_png(pixels) == encode_png(pixels.copy())


# --- safe_zip --------------------------------------------------------------------


def test_refuses_zip_slip_symlinks_oversize_and_duplicates(tmp_path):
    link = zipfile.ZipInfo("glioma/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    members = [
        ("../evil.jpg", image_bytes()),
        ("/abs/evil.jpg", image_bytes()),
        ("C:/windows/evil.jpg", image_bytes()),
        ("glioma\\..\\..\\evil.jpg", image_bytes()),
        (link, b"/etc/passwd"),
        ("glioma/huge.png", bytes(LIMITS.max_member_bytes + 1)),
        ("glioma/ok.jpg", image_bytes()),
    ]
    path = write_zip(tmp_path / "folders.zip", members)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as archive:
        archive.writestr("glioma/ok.jpg", image_bytes(seed=1))
    with SafeZip(path, LIMITS.max_member_bytes) as archive:
        reasons = [getattr(m, "reason", "ok").split(":")[0] for m in archive.members()]
        with pytest.raises(MemberError, match="zip-slip"):
            archive.read(0)  # reading directly is refused too, not only listing
    assert reasons == ["zip-slip"] * 4 + ["symlink member", "oversize member", "ok", "duplicate member"]


def test_names_in_any_encoding(tmp_path):
    """Flagged UTF-8, unflagged UTF-8 (common) and unflagged cp437 names all decode to what was meant."""
    path = write_zip(
        tmp_path / "folders.zip",
        [("glioma/naïve.jpg", image_bytes()), ("glioma/NAME1.jpg", image_bytes()), ("glioma/NAME2.jpg", image_bytes())],
    )
    raw = path.read_bytes().replace(b"NAME1", "tüm1".encode()).replace(b"NAME2", b"caf\x82" + b"2")
    path.write_bytes(raw)
    items = read_all(path)
    assert sorted(items) == [
        "folders.zip/glioma/café2.jpg",
        "folders.zip/glioma/naïve.jpg",
        "folders.zip/glioma/tüm1.jpg",
    ]
    assert all(isinstance(item, SourceImage) for item in items.values())


def test_corrupt_member_and_unreadable_archive_are_rejects(tmp_path):
    good = image_bytes(seed=3)
    path = write_zip(tmp_path / "folders.zip", [("glioma/a.jpg", good)])
    raw = bytearray(path.read_bytes())
    raw[raw.index(good) + 200] ^= 0xFF  # flips a data byte: the CRC no longer matches
    path.write_bytes(bytes(raw))
    assert read_all(path)["folders.zip/glioma/a.jpg"].reason.startswith("corrupt member: ")
    not_zip = tmp_path / "broken.zip"
    not_zip.write_text("not a zip")
    assert [r.reason.split(":")[0] for r in read_archive(not_zip, "src", FOLDERS, LIMITS)] == ["unreadable archive"]


# --- image_folder ------------------------------------------------------------------


def test_image_folder_labels_boxes_and_faults(tmp_path):
    members = [
        ("Training/", b""),
        ("Training/glioma/a.txt", b"2 0.5 0.25 0.2 0.1\r\n1 0.1 0.1 0.1 0.1\n"),  # box file before its image
        ("Training/glioma/a.jpg", image_bytes(seed=1)),
        ("Testing/notumor/b.jpg", image_bytes(seed=2, mode="RGB")),
        ("Testing/notumor/b.txt", b""),  # empty: no box
        ("Testing/glioma/c.jpg", image_bytes(seed=3)),
        ("Testing/glioma/c.txt", b"2 0.5 nan 0.2 0.1"),  # bad box: rejected alone, image kept
        ("Testing/glioma/.ipynb_checkpoints/c-checkpoint.jpg", image_bytes(seed=3)),
        ("stray.jpg", image_bytes()),
        ("README.txt", b"about this set"),
        ("glioma/empty.jpg", b""),
        ("glioma/text.jpg", b"hello"),
        ("glioma/truncated.jpg", image_bytes(64, 64)[:400]),
        ("glioma/tiny.png", image_bytes(1, 1, fmt="PNG")),
        ("glioma/bomb.pgm", b"P5\n5000 5000\n255\n" + bytes(100)),
    ]
    path = write_zip(tmp_path / "folders.zip", members)
    items = read_all(path)
    a, b, c = (
        items[f"folders.zip/{n}"] for n in ("Training/glioma/a.jpg", "Testing/notumor/b.jpg", "Testing/glioma/c.jpg")
    )
    assert (a.label, a.box, a.patient_id, a.mask) == ("glioma", (0.5, 0.25, 0.2, 0.1), None, None)
    assert (b.label, b.box, b.pixels.ndim) == ("no_tumor", None, 2)
    assert (c.label, c.box) == ("glioma", None)
    category = {
        name.removeprefix("folders.zip/"): item.reason.split(":")[0]
        for name, item in items.items()
        if isinstance(item, Rejected)
    }
    assert category == {
        "Testing/glioma/c.txt": "bad YOLO box",
        "Testing/glioma/.ipynb_checkpoints/c-checkpoint.jpg": "unknown folder",
        "stray.jpg": "unknown folder",
        "glioma/empty.jpg": "empty file",
        "glioma/text.jpg": "not an image",
        "glioma/truncated.jpg": "corrupt image",
        "glioma/tiny.png": "too small",
        "glioma/bomb.pgm": "pixel bomb",
    }
    with SafeZip(path, LIMITS.max_member_bytes) as archive:
        planned = list(plan_archive(archive, "src", FOLDERS))
        assert len(planned) == len(archive) == len(members)  # every member accounted for exactly once
    skipped = {
        item.original_path.removeprefix("folders.zip/"): item.kind for item in planned if isinstance(item, Skipped)
    }
    assert skipped == {
        "Training/": "directory",
        "Training/glioma/a.txt": "annotation",
        "Testing/notumor/b.txt": "annotation",
        "README.txt": "other",
    }


@pytest.mark.parametrize("text", ["0 0.5 0.5", "x 0.5 0.5 0.1 0.1", "0 1.5 0.5 0.1 0.1", "0 0.5 0.5 0 0.1"])
def test_malformed_yolo_boxes_are_refused(text):
    with pytest.raises(ValueError):
        parse_yolo_box(text)


# --- figshare_mat ------------------------------------------------------------------


def test_figshare_mat_reads_label_patient_and_orientation(tmp_path):
    image = np.zeros((40, 64), dtype=np.int16)
    image[:10, :20] = 1000  # bright block top-left
    mask = np.zeros((40, 64), dtype=bool)
    mask[:10, :20] = True
    path = write_zip(
        tmp_path / "mats.zip",
        [
            ("1.mat", mat_bytes(image, 2.0, "MRN42", mask)),
            ("2.mat", mat_bytes(image, 3.0, pid=None)),
            ("README.txt", b"x"),
        ],
    )
    items = read_all(path, FIGSHARE)
    first = items["mats.zip/1.mat"]
    assert (first.label, first.patient_id, first.box) == ("glioma", "MRN42", None)
    assert first.pixels.shape == (40, 64) and first.pixels[0, 0] == 255 and first.pixels[-1, -1] == 0
    assert first.mask.dtype == np.bool_ and np.array_equal(first.mask, mask)
    second = items["mats.zip/2.mat"]
    assert (second.label, second.patient_id, second.mask) == ("pituitary", None, None)
    assert set(items) == {"mats.zip/1.mat", "mats.zip/2.mat"}  # README is skipped, not yielded


def test_figshare_mat_faults_are_rejects(tmp_path):
    image = np.ones((32, 32), dtype=np.int16)
    missing_image = io.BytesIO()
    with h5py.File(missing_image, "w", userblock_size=512) as handle:
        handle.create_group("cjdata")["label"] = np.array([[1.0]])
    members = [
        ("not_hdf5.mat", b"MATLAB 5.0 MAT-file, an older format" + bytes(200)),
        ("truncated.mat", mat_bytes(image, 1.0)[:1500]),
        ("missing_image.mat", missing_image.getvalue()),
        ("unknown_label.mat", mat_bytes(image, 7.0)),
        ("bad_mask.mat", mat_bytes(image, 1.0, mask=np.zeros((16, 32), dtype=bool))),
        ("tiny.mat", mat_bytes(np.ones((4, 4)), 1.0)),
    ]
    items = read_all(write_zip(tmp_path / "mats.zip", members), FIGSHARE)
    category = {name.removeprefix("mats.zip/"): item.reason.split(":")[0] for name, item in items.items()}
    assert category == {
        "not_hdf5.mat": "not a MATLAB v7.3 file",
        "truncated.mat": category["truncated.mat"],
        "missing_image.mat": "corrupt .mat",
        "unknown_label.mat": "unknown label",
        "bad_mask.mat": "corrupt .mat",
        "tiny.mat": "too small",
    }
    assert category["truncated.mat"] in {"not a MATLAB v7.3 file", "corrupt .mat"}
    assert all(isinstance(item, Rejected) for item in items.values())


def test_tasks_are_small_and_picklable(tmp_path):
    import pickle

    path = write_zip(tmp_path / "mats.zip", [("1.mat", mat_bytes(np.ones((32, 32)), 1.0))])
    with SafeZip(path, LIMITS.max_member_bytes) as archive:
        (task,) = plan_archive(archive, "src", FIGSHARE)
    assert isinstance(task, MemberTask) and pickle.loads(pickle.dumps(task)) == task


def test_the_config_knows_exactly_the_source_formats_there_are_readers_for():
    assert SOURCE_FORMATS == tuple(FORMATS)
