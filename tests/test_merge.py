"""The merge stage on tiny archives: outputs, accounting, masks, determinism across runs and worker counts."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from brainmri.config import MergeConfig, SourceConfig
from brainmri.core.imaging import pixel_sha256
from brainmri.dataset.merge import MANIFEST_COLUMNS, REJECT_COLUMNS, MergeError, make_image_id, merge_sources
from conftest import write_zip

SOURCES = {
    "mats": SourceConfig(
        format="figshare_mat", files=[{"name": "mats.zip"}], labels={"1": "meningioma", "2": "glioma", "3": "pituitary"}
    ),
    "folders": SourceConfig(
        format="image_folder",
        files=[{"name": "folders.zip"}],
        labels={"glioma": "glioma", "notumor": "no_tumor", "yes": "tumor_unknown"},
    ),
}


def jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def mat(label: float, pid: str, with_mask: bool) -> bytes:
    """A figshare record (HDF5 after a 512-byte userblock, arrays column-major) with a top-left bright tumour."""
    image = np.full((40, 64), 100, dtype=np.int16)
    image[:10, :20] = 2000
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=512) as handle:
        group = handle.create_group("cjdata")
        group["image"] = image.T
        group["label"] = np.array([[label]])
        group["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
        if with_mask:
            group["tumorMask"] = (image > 1000).astype(np.uint8).T
    return buffer.getvalue()


@pytest.fixture
def archives(tmp_path) -> dict[str, list[Path]]:
    link = zipfile.ZipInfo("glioma/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    mats = write_zip(
        tmp_path / "mats.zip",
        [("1.mat", mat(1, "P1", True)), ("2.mat", mat(2, "P1", False)), ("bad.mat", b"nope"), ("README.txt", b"hi")],
    )
    folders = write_zip(
        tmp_path / "folders.zip",
        [
            ("glioma/", b""),
            ("glioma/a.jpg", jpeg(1)),
            ("glioma/a.txt", b"0 0.5 0.5 0.25 0.125\n"),
            ("notumor/b.jpg", jpeg(2)),
            ("yes/c.jpg", jpeg(3, (64, 64))),
            ("glioma/empty.jpg", b""),
            ("glioma/text.jpg", b"not an image"),
            ("glioma/truncated.jpg", jpeg(4, (64, 64))[:300]),
            ("glioma/one.jpg", jpeg(5, (1, 1))),
            ("glioma/bomb.pgm", b"P5\n9000 9000\n255\n" + bytes(100)),
            ("glioma/huge.png", bytes(60_000)),
            ("../escape.jpg", jpeg(6)),
            (link, b"/etc/passwd"),
            ("glioma/NAMEX.jpg", jpeg(7)),
            (".ipynb_checkpoints/d.jpg", jpeg(8)),
            ("notes.md", b"# notes"),
        ],
    )
    folders.write_bytes(folders.read_bytes().replace(b"NAMEX", b"caf\x82s"))  # cp437 name without the UTF-8 flag
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    return {"mats": [mats], "folders": [folders, broken]}


def config(out_dir: Path) -> MergeConfig:
    return MergeConfig(out_dir=out_dir, min_side=8, max_pixels=1_000_000, max_member_bytes=50_000)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def snapshot(out_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_merge_writes_manifest_rejects_and_accounts_for_every_member(archives, tmp_path):
    out_dir = tmp_path / "merged"
    report = merge_sources(archives, SOURCES, config(out_dir), workers=1)

    with (out_dir / "manifest.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == MANIFEST_COLUMNS
    with (out_dir / "rejects.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == REJECT_COLUMNS
    rows = {row["original_path"]: row for row in read_csv(out_dir / "manifest.csv")}
    rejects = {row["original_path"]: row["reason"].split(":")[0] for row in read_csv(out_dir / "rejects.csv")}
    assert sorted(rows) == [
        "folders.zip/glioma/a.jpg",
        "folders.zip/glioma/cafés.jpg",
        "folders.zip/notumor/b.jpg",
        "folders.zip/yes/c.jpg",
        "mats.zip/1.mat",
        "mats.zip/2.mat",
    ]
    assert rejects == {
        "broken.zip": "unreadable archive",
        "mats.zip/bad.mat": "not a MATLAB v7.3 file",
        "folders.zip/glioma/empty.jpg": "empty file",
        "folders.zip/glioma/text.jpg": "not an image",
        "folders.zip/glioma/truncated.jpg": "corrupt image",
        "folders.zip/glioma/one.jpg": "too small",
        "folders.zip/glioma/bomb.pgm": "pixel bomb",
        "folders.zip/glioma/huge.png": "oversize member",
        "folders.zip/../escape.jpg": "zip-slip",
        "folders.zip/glioma/link.jpg": "symlink member",
        "folders.zip/.ipynb_checkpoints/d.jpg": "unknown folder",
    }

    members = {
        name: sum(len(zipfile.ZipFile(p).infolist()) for p in paths if p.name != "broken.zip")
        for name, paths in archives.items()
    }
    for name, counts in report.sources.items():
        assert counts.members == members[name]
        assert (
            counts.images + counts.rejected + sum(counts.non_image.values())
            == counts.members + counts.unreadable_archives
        )
    assert report.sources["folders"].non_image == {"annotation": 1, "directory": 1, "other": 1}
    assert report.sources["mats"].non_image == {"other": 1}
    assert report.classes == {"glioma": 3, "meningioma": 1, "no_tumor": 1, "tumor_unknown": 1}
    assert report.images == 6 and report.rejected == 11 and report.reject_reasons["zip-slip"] == 1
    assert json.loads(report.to_json())["sources"]["mats"]["classes"] == {"glioma": 1, "meningioma": 1}

    a, first = rows["folders.zip/glioma/a.jpg"], rows["mats.zip/1.mat"]
    assert (a["box"], a["mask_path"], a["patient_id"], a["label"]) == ("0.5 0.5 0.25 0.125", "", "", "glioma")
    assert (first["patient_id"], first["label"], first["width"], first["height"]) == ("P1", "meningioma", "64", "40")
    assert rows["mats.zip/2.mat"]["mask_path"] == ""
    for row in rows.values():
        assert row["image_id"] == f"{row['source']}-{hashlib.sha1(row['original_path'].encode()).hexdigest()[:12]}"
        assert row["path"] == (out_dir / "images" / row["source"] / f"{row['image_id']}.png").as_posix()
        with Image.open(row["path"]) as image:
            assert image.mode == "L" and image.size == (int(row["width"]), int(row["height"]))
            assert pixel_sha256(np.asarray(image)) == row["sha256"]


def test_mask_lands_where_the_tumour_is(archives, tmp_path):
    out_dir = tmp_path / "merged"
    merge_sources(archives, SOURCES, config(out_dir), workers=1)
    row = next(r for r in read_csv(out_dir / "manifest.csv") if r["original_path"] == "mats.zip/1.mat")
    mask = np.asarray(Image.open(row["mask_path"])) > 0
    pixels = np.asarray(Image.open(row["path"]))
    assert mask.shape == pixels.shape == (40, 64)
    assert mask[:10, :20].all() and mask.sum() == 200  # top-left, not transposed
    assert pixels[0, 0] == 255 and pixels[-1, -1] == 0


def test_outputs_are_byte_identical_across_runs_and_worker_counts(archives, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(Path("merged"))  # relative out_dir: manifest paths stay relative to the working directory
    merge_sources(archives, SOURCES, cfg, workers=1)
    first = snapshot(Path("merged"))
    (Path("merged") / "images" / "folders" / "stale.png").write_bytes(b"from an older run")
    merge_sources(archives, SOURCES, cfg, workers=2)
    assert snapshot(Path("merged")) == first
    assert all(row["path"].startswith("merged/images/") for row in read_csv(Path("merged/manifest.csv")))


def test_image_ids_are_stable_and_inputs_are_checked(archives, tmp_path):
    assert (
        make_image_id("kaggle", "k.zip/glioma/x.jpg")
        == "kaggle-" + hashlib.sha1(b"k.zip/glioma/x.jpg").hexdigest()[:12]
    )
    with pytest.raises(ValueError, match="no configuration"):
        merge_sources({"nope": archives["mats"]}, SOURCES, config(tmp_path / "m"))
    with pytest.raises(ValueError, match="several archives named"):
        merge_sources({"mats": archives["mats"] * 2}, SOURCES, config(tmp_path / "m"))


def test_listed_members_are_left_out_as_rejects_with_their_reason(archives, tmp_path):
    listed = {"folders.zip/notumor/b.jpg": "head CT, not MRI", "mats.zip/2.mat": "duplicate record"}
    sources = {
        name: SourceConfig(
            **{**source.model_dump(), "exclude": {k: v for k, v in listed.items() if k.startswith(name)}}
        )
        for name, source in SOURCES.items()
    }
    out_dir = tmp_path / "merged"
    report = merge_sources(archives, sources, config(out_dir), workers=1)

    manifest = {row["original_path"] for row in read_csv(out_dir / "manifest.csv")}
    rejects = {row["original_path"]: row["reason"] for row in read_csv(out_dir / "rejects.csv")}
    assert not manifest & set(listed)
    assert {path: rejects[path] for path in listed} == {path: f"excluded: {why}" for path, why in listed.items()}
    assert report.images == 4 and report.rejected == 13 and report.reject_reasons["excluded"] == 2
    assert report.sources["folders"].reject_reasons["excluded"] == 1 and report.sources["folders"].classes == {
        "glioma": 2,
        "tumor_unknown": 1,
    }
    assert not list((out_dir / "images" / "folders").glob(f"{make_image_id('folders', 'folders.zip/notumor/b.jpg')}*"))


def test_a_listed_member_the_archive_lacks_stops_the_merge(archives, tmp_path):
    typo = SourceConfig(**{**SOURCES["folders"].model_dump(), "exclude": {"folders.zip/notumor/B.jpg": "head CT"}})
    with pytest.raises(
        MergeError, match=r"sources\.folders\.exclude: folders\.zip/notumor/B\.jpg is not an image member"
    ):
        merge_sources(archives, {**SOURCES, "folders": typo}, config(tmp_path / "merged"), workers=1)
    assert not (tmp_path / "merged").exists()


def test_an_exclusion_must_name_one_of_the_sources_files_and_give_a_reason():
    base = SOURCES["folders"].model_dump()
    with pytest.raises(ValueError, match="does not start with one of the source's files"):
        SourceConfig(**{**base, "exclude": {"other.zip/notumor/b.jpg": "head CT"}})
    with pytest.raises(ValueError, match="needs a reason"):
        SourceConfig(**{**base, "exclude": {"folders.zip/notumor/b.jpg": " "}})


def test_the_datasheet_says_how_many_files_each_source_excludes_and_why():
    from brainmri.dataset.datasheet import _excluded_lines

    listed = SourceConfig(
        **{
            **SOURCES["folders"].model_dump(),
            "exclude": {"folders.zip/a.jpg": "head CT", "folders.zip/b.jpg": "head CT"},
        }
    )
    assert _excluded_lines(SOURCES) == []
    (line, blank) = _excluded_lines({**SOURCES, "folders": listed})
    assert line.endswith(": folders 2 (head CT).") and "rejects.csv" in line and blank == ""
