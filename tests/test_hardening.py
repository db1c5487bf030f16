"""Hostile and careless input: crafted .mat files, dangerous params, killed workers, bad checkpoints, predict's edges.

Every case ends in one clear line (a reject reason, or ``error: ...`` and exit 1), never a traceback, and
loses or overwrites nothing.
"""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainmri.config import MergeConfig, SourceConfig
from brainmri.merge import MergeError, merge_sources
from brainmri.sources.figshare_mat import BadMat, read_record
from conftest import write_zip

LIMITS = MergeConfig(min_side=8, max_pixels=1_000_000, max_member_bytes=5_000_000)
MATS = SourceConfig(format="figshare_mat", files=[{"name": "mats.zip"}], labels={"1": "meningioma", "2": "glioma"})


def hostile_mat(tmp_path: Path, build) -> bytes:
    """A figshare-like record whose ``cjdata`` group ``build(group, file_path)`` fills; returned as bytes."""
    path = tmp_path / f"hostile-{time.monotonic_ns()}.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        build(handle.create_group("cjdata"), path)
    return path.read_bytes()


def good_fields(group, *, image=True, label=True, pid=True):
    if image:
        group["image"] = np.arange(40 * 32, dtype=np.int16).reshape(32, 40)
    if label:
        group["label"] = np.array([[1.0]])
    if pid:
        group["PID"] = np.array([[ord("P")], [ord("1")]], dtype=np.uint16)


WITHOUT = {"image": {"image": False}, "label": {"label": False}, "PID": {"pid": False}, "tumorMask": {}}
"""The good fields to leave out when a test writes field ``name`` itself."""


def external(name: str):
    """A dataset ``name`` whose bytes h5py would read from /etc/passwd (or a local secret file)."""

    def build(group, _path):
        good_fields(group, **WITHOUT[name])
        shape = {"image": (40, 32), "label": (1, 1), "PID": (2, 1), "tumorMask": (40, 32)}[name]
        dtype = {"image": "i2", "label": "u1", "PID": "u2", "tumorMask": "u1"}[name]
        group.create_dataset(name, shape=shape, dtype=dtype, external=[("/etc/passwd", 0, int(np.prod(shape)) * np.dtype(dtype).itemsize)])

    return build


def virtual(name: str):
    def build(group, path):
        good_fields(group, **WITHOUT[name])
        shape = {"image": (40, 32), "label": (1, 1), "PID": (2, 1), "tumorMask": (40, 32)}[name]
        layout = h5py.VirtualLayout(shape=shape, dtype="i2")
        layout[:] = h5py.VirtualSource(str(path.with_name("elsewhere.h5")), "data", shape=shape)
        group.create_virtual_dataset(name, layout, fillvalue=0)

    return build


@pytest.mark.parametrize("name", ["image", "label", "PID", "tumorMask"])
@pytest.mark.parametrize("kind", [external, virtual])
def test_mat_datasets_stored_outside_the_file_are_refused(tmp_path, name, kind):
    data = hostile_mat(tmp_path, kind(name))
    with pytest.raises(BadMat, match=r"^refused \.mat: cjdata/" + name + " (has external storage|is a virtual dataset)"):
        read_record(data, LIMITS)


@pytest.mark.parametrize("link", ["soft", "external"])
def test_mat_links_are_not_followed(tmp_path, link):
    def build(group, path):
        good_fields(group, image=False)
        group.file["elsewhere"] = np.zeros((40, 32), dtype=np.int16)
        group["image"] = h5py.SoftLink("/elsewhere") if link == "soft" else h5py.ExternalLink("/etc/passwd", "/x")

    with pytest.raises(BadMat, match=r"^refused \.mat: cjdata/image goes through a (SoftLink|ExternalLink)"):
        read_record(hostile_mat(tmp_path, build), LIMITS)


def test_huge_declared_mask_is_refused_from_metadata_before_any_read(tmp_path):
    """An 11 KB file declaring a 40000x40000 mask: refused without allocating it (peak memory stays small)."""
    import tracemalloc

    def build(group, _path):
        good_fields(group)
        group.create_dataset("tumorMask", shape=(40000, 40000), dtype="u1", chunks=(1000, 1000), compression="gzip")

    data = hostile_mat(tmp_path, build)
    assert len(data) < 100_000
    tracemalloc.start()
    with pytest.raises(BadMat, match="tumorMask declares 1600000000 elements"):
        read_record(data, LIMITS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("label", np.zeros((100, 100)), "cjdata/label declares 10000 elements"),
        ("PID", np.zeros((5000, 1), dtype=np.uint16), "cjdata/PID declares 5000 elements"),
        ("label", np.array([b"one"]), "cjdata/label has type |S3, expected numbers"),
        ("label", np.zeros((0, 1)), "cjdata/label is empty"),
        ("tumorMask", np.zeros((2, 40, 32), dtype=np.uint8), "expected at most 2-D"),
        ("tumorMask", np.zeros((32, 41), dtype=np.uint8), "tumorMask is (41, 32), image is (40, 32)"),
    ],
)
def test_mat_fields_of_the_wrong_shape_or_type_are_one_line(tmp_path, field, value, message):
    def build(group, _path):
        good_fields(group, **({"label": False} if field == "label" else {"pid": False} if field == "PID" else {}))
        group[field] = value

    with pytest.raises(BadMat, match=r"^corrupt \.mat: ") as caught:
        read_record(hostile_mat(tmp_path, build), LIMITS)
    assert message in str(caught.value)


def test_a_merged_mat_never_carries_a_local_file_into_the_build(tmp_path):
    """End to end: the crafted record is a reject, and no byte of /etc/passwd reaches the merged images."""
    archive = write_zip(tmp_path / "mats.zip", [("evil.mat", hostile_mat(tmp_path, external("image")))])
    report = merge_sources({"mats": [archive]}, {"mats": MATS}, LIMITS.model_copy(update={"out_dir": tmp_path / "merged"}), workers=1)
    assert (report.images, report.rejected, report.reject_reasons) == (0, 1, {"refused .mat": 1})
    assert not list((tmp_path / "merged" / "images").rglob("*.png"))
