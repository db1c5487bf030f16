"""Hostile and careless input: crafted .mat files, dangerous params, killed workers, bad checkpoints, predict's edges.

Every case ends in one clear line (a reject reason, or ``error: ...`` and exit 1), never a traceback, and
loses or overwrites nothing.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainmri.config import MergeConfig, SourceConfig
from brainmri.dataset.merge import MergeError, merge_sources
from brainmri.dataset.sources.figshare_mat import BadMat, read_record
from conftest import CLASSES, untrained_checkpoint, write_zip

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
        group.create_dataset(
            name,
            shape=shape,
            dtype=dtype,
            external=[("/etc/passwd", 0, int(np.prod(shape)) * np.dtype(dtype).itemsize)],
        )

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
    with pytest.raises(
        BadMat, match=r"^refused \.mat: cjdata/" + name + " (has external storage|is a virtual dataset)"
    ):
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
    report = merge_sources(
        {"mats": [archive]}, {"mats": MATS}, LIMITS.model_copy(update={"out_dir": tmp_path / "merged"}), workers=1
    )
    assert (report.images, report.rejected, report.reject_reasons) == (0, 1, {"refused .mat": 1})
    assert not list((tmp_path / "merged" / "images").rglob("*.png"))


def _die(*_args) -> None:
    """A merge worker's start that is killed at once, as the OOM killer would kill it."""
    os.kill(os.getpid(), signal.SIGKILL)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_worker_is_one_line_and_the_previous_outputs_stay_whole(tmp_path, monkeypatch):
    from brainmri.dataset import merge

    archive = write_zip(
        tmp_path / "mats.zip",
        [(f"{k}.mat", hostile_mat(tmp_path, lambda group, _path: good_fields(group))) for k in range(4)],
    )
    cfg = LIMITS.model_copy(update={"out_dir": tmp_path / "build" / "merged"})
    merge_sources({"mats": [archive]}, {"mats": MATS}, cfg, workers=1)
    before = snapshot(cfg.out_dir)
    assert len(before) == 6  # 4 images, manifest, rejects
    monkeypatch.setattr(merge, "_start_worker", _die)
    with pytest.raises(MergeError, match=r"^merge: a worker process died .*build/merged is left as it was"):
        merge_sources({"mats": [archive]}, {"mats": MATS}, cfg, workers=2)
    assert snapshot(cfg.out_dir) == before
    assert sorted(p.name for p in cfg.out_dir.parent.iterdir()) == ["merged"]  # no staging folder left behind


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["fetch"].update(out_dir="data"), "fetch.out_dir 'data' must be a folder inside build/"),
        (
            lambda p: p["fetch"].update(out_dir=".", data_dir="build/raw"),
            "fetch.out_dir '.' must be a folder inside build/",
        ),
        (
            lambda p: p["fetch"].update(data_dir="build/raw"),
            "fetch.out_dir 'build/raw' overlaps the input folder fetch.data_dir",
        ),
        (lambda p: p["merge"].update(out_dir="build"), "merge.out_dir 'build' must be a folder inside build/"),
        (lambda p: p["merge"].update(out_dir="build/../.."), "must be a folder inside build/"),
        (lambda p: p["dedup"].update(out_dir="build/merged"), "dedup.out_dir 'build/merged' overlaps merge.out_dir"),
        (
            lambda p: p["split"].update(dataset_dir="build/split/dataset"),
            "split.dataset_dir 'build/split/dataset' overlaps split.out_dir",
        ),
        (
            lambda p: p["fetch"].update(mirrors=["build/model/mirror"]),
            "train.out_dir 'build/model' overlaps the input folder fetch.mirrors[0]",
        ),
        (
            lambda p: p["sources"].update({"../../../x": p["sources"]["demo_kaggle"]}),
            "source name(s) ['../../../x'] must be plain folder names",
        ),
        (
            lambda p: p["sources"]["demo_kaggle"]["files"][0].update(name="../../x.zip"),
            "sources.demo_kaggle.files.0.name: String should match pattern",
        ),
        (
            lambda p: p["evaluate"].update(external=[{"name": "..", "path": "x", "labels": {"a": "glioma"}}]),
            "evaluate.external.0.name",
        ),
        (lambda p: p.update(seed=-1), "seed: Input should be greater than or equal to 0"),
        (lambda p: p.update(seed=2**40), "seed: Input should be less than or equal to 4294967295"),
        (
            lambda p: p["train"].update(image_size=100000),
            "train.image_size: Input should be less than or equal to 1024",
        ),
        (lambda p: p.pop("train"), "train: Field required"),
    ],
)
def test_dangerous_params_are_refused_in_one_line(params, edit, message):
    from brainmri.config import ConfigError, parse_config

    edit(params)
    with pytest.raises(ConfigError) as error:
        parse_config(params, origin="params.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["binary", "folder"])
def test_params_that_are_not_a_text_file_are_one_line(tmp_path, kind):
    from typer.testing import CliRunner

    from brainmri.cli import app

    path = tmp_path / "params.yaml"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(256)) * 4)
    result = CliRunner().invoke(app, ["merge", "--params", str(path)])
    expected = "is a folder, not a params file" if kind == "folder" else "not a text file (params must be YAML)"
    assert result.exit_code == 1 and result.output == f"error: {path}: {expected}\n"


# --- predict: checkpoints, fitted files, --out and inputs from strangers ------------------------------------------


@pytest.fixture
def model_file(tmp_path) -> Path:
    return untrained_checkpoint(tmp_path / "model.pt", data_version="t")


@pytest.fixture
def scan(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "scans" / "a.png"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8)).save(path)
    return path


def predict_cli(*args: str):
    """Run ``brainmri predict``; every failure must be exactly one ``error:`` line and exit status 1."""
    from typer.testing import CliRunner

    from brainmri.cli import app

    return CliRunner().invoke(app, ["predict", "--no-ood", "--no-temperature", *map(str, args)])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("skipped ")]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    return lines[0]


def _edited(model_file: Path, tmp_path: Path, edit) -> Path:
    import torch

    payload = torch.load(model_file, weights_only=True)
    edit(payload)
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def bad_checkpoint(kind: str, model_file: Path, tmp_path: Path) -> Path:
    import torch

    from brainmri.model.architectures import build_model

    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bare_tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "malicious_pickle":
        torch.save({"format_version": 1, "payload": _Evil()}, path)
    elif kind == "other_architecture":
        return _edited(
            model_file,
            tmp_path,
            lambda p: p.update(state_dict=build_model("resnet18", 4, pretrained=False).state_dict()),
        )
    elif kind == "three_classes":
        return _edited(model_file, tmp_path, lambda p: p.update(classes=CLASSES[:3]))
    elif kind == "no_image_size":
        return _edited(model_file, tmp_path, lambda p: p.pop("image_size"))
    elif kind == "negative_image_size":
        return _edited(model_file, tmp_path, lambda p: p.update(image_size=-96))
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", "not a checkpoint ("),
        ("empty", "not a checkpoint (EOFError"),
        ("bare_tensor", "holds a Tensor, not a checkpoint"),
        ("malicious_pickle", "refused: it holds pickled objects other than tensors"),
        ("other_architecture", "its weights do not fit a small_cnn with 4 classes"),
        ("three_classes", "its weights do not fit a small_cnn with 3 classes"),
        ("no_image_size", "'image_size' must be a whole number from 16 to 1024, got None"),
        ("negative_image_size", "'image_size' must be a whole number from 16 to 1024, got -96"),
        ("folder", "not a file"),
        ("absent", "no such checkpoint file"),
    ],
)
def test_bad_checkpoints_are_one_line_and_run_no_code(tmp_path, model_file, scan, monkeypatch, kind, message):
    monkeypatch.chdir(tmp_path)
    path = bad_checkpoint(kind, model_file, tmp_path)
    out = tmp_path / "predictions.csv"
    out.write_text("previous results\n")
    line = one_error_line(predict_cli(scan, "--model", path, "--out", out))
    assert line.startswith(f"error: {path}: ") and message in line
    assert not (tmp_path / "pwned").exists()
    assert out.read_text() == "previous results\n"  # a failed run leaves the old table whole
    assert [p.name for p in tmp_path.glob(".predictions.csv.*")] == []  # and no temporary file


@pytest.mark.parametrize("kind", ["text", "pickled_object", "npy"])
def test_a_bad_ood_file_is_one_line(tmp_path, model_file, scan, kind):
    path = tmp_path / "ood.npz"
    if kind == "text":
        path.write_text("not numpy")
    elif kind == "pickled_object":
        np.savez(path, loc=np.array([{"a": 1}], dtype=object))
    else:
        np.save(tmp_path / "ood.npy", np.zeros(3))
        (tmp_path / "ood.npy").rename(path)
    from typer.testing import CliRunner

    from brainmri.cli import app

    args = [
        "predict",
        str(scan),
        "--model",
        str(model_file),
        "--ood",
        str(path),
        "--no-temperature",
        "--out",
        str(tmp_path / "p.csv"),
    ]
    result = CliRunner().invoke(app, args)
    assert f"{path}: not an out-of-distribution check written by the evaluate stage" in one_error_line(result)


@pytest.mark.parametrize(
    "where", ["folder", "/dev/full", "input", "image_in_an_input_folder", "checkpoint", "under_a_file"]
)
def test_out_is_checked_before_any_work_and_never_overwrites_an_input(tmp_path, model_file, scan, where):
    before = {p: p.read_bytes() for p in (scan, model_file)}
    out = {
        "folder": tmp_path / "scans",
        "/dev/full": Path("/dev/full"),
        "input": scan,
        "image_in_an_input_folder": scan.with_name("new.png"),
        "checkpoint": model_file,
        "under_a_file": scan / "p.csv",
    }[where]
    # a checkpoint that would fail to load shows that --out is checked first
    model = model_file if where in ("input", "checkpoint") else tmp_path / "absent.pt"
    given = scan.parent if where == "image_in_an_input_folder" else scan
    line = one_error_line(predict_cli(given, "--model", model, "--out", out))
    expected = {
        "folder": "exists and is not a regular file",
        "/dev/full": "exists and is not a regular file",
        "input": "is an input; refusing to overwrite it",
        "image_in_an_input_folder": "is an input; refusing to overwrite it",
        "checkpoint": "is the checkpoint; refusing to overwrite it",
        "under_a_file": f"cannot write there (File exists: {scan})",
    }[where]
    assert line.startswith(f"error: --out {out}") and expected in line
    assert {p: p.read_bytes() for p in (scan, model_file)} == before
    assert not scan.with_name("new.png").exists()


def test_nothing_readable_is_an_error_not_an_empty_table(tmp_path, model_file):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no images here")
    (notes / "fake.png").write_text("text named like an image")
    line = one_error_line(
        predict_cli(tmp_path / "missing.png", notes, "--model", model_file, "--out", tmp_path / "p.csv")
    )
    assert "nothing readable to predict" in line and "2 file(s) skipped" in line and "missing.png: not found" in line
    assert not (tmp_path / "p.csv").exists()


def test_unreadable_and_oversize_files_are_skipped_with_a_reason_and_listed_in_the_csv(
    tmp_path, model_file, scan, monkeypatch
):
    import pandas as pd

    locked = scan.with_name("locked.png")
    locked.write_bytes(scan.read_bytes())
    huge = scan.with_name("huge.png")
    with huge.open("wb") as handle:  # sparse: 250 MB on paper, nothing on disk, and never read
        handle.truncate(250_000_000)
    real_read = Path.read_bytes

    def read_bytes(self):
        if self.name == "huge.png":
            raise AssertionError("an oversize file was read")
        if self.name == "locked.png":
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    out = tmp_path / "p.csv"
    result = predict_cli(scan.parent, "--model", model_file, "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False).set_index("file")
    assert table.loc[str(scan), "predicted"] in CLASSES and table.loc[str(scan), "error"] == ""
    assert table.loc[str(locked), "error"] == "unreadable file: Permission denied"
    assert table.loc[str(huge), "error"] == "oversize file: 250000000 bytes > max_member_bytes 200000000"
    assert table.loc[str(huge), "predicted"] == ""


# --- fuzz: a few hundred mutated files through merge and predict ------------------------------------------------


def _image_bytes(rng: np.random.Generator, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    size = tuple(int(v) for v in rng.integers(32, 64, 2))
    Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _mat_bytes(tmp_path: Path) -> bytes:
    return hostile_mat(tmp_path, lambda group, _path: good_fields(group))


def mutate(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    """One seeded mutation of ``data``: kept, truncated, bit-flipped, random bytes, empty, or a random tail."""
    kind = str(rng.choice(["intact", "truncated", "bitflip", "random", "empty", "tail"]))
    if kind == "truncated":
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == "bitflip":
        raw = bytearray(data)
        for position in rng.integers(0, len(raw), int(rng.integers(1, 16))):
            raw[position] ^= 1 << int(rng.integers(0, 8))
        data = bytes(raw)
    elif kind == "random":
        data = rng.bytes(int(rng.integers(1, 4000)))
    elif kind == "empty":
        data = b""
    elif kind == "tail":
        cut = int(rng.integers(0, len(data)))
        data = data[:cut] + rng.bytes(len(data) - cut)
    return kind, data


def fuzz_files(tmp_path: Path, rng: np.random.Generator, count: int, suffixes: list[str]) -> list[tuple[str, bytes]]:
    """``count`` (name, bytes): PNG, JPEG and .mat contents, mutated, under names whose extension may lie."""
    bases = {"PNG": _image_bytes(rng, "PNG"), "JPEG": _image_bytes(rng, "JPEG"), "MAT": _mat_bytes(tmp_path)}
    files = []
    for k in range(count):
        content = str(rng.choice(list(bases)))
        kind, data = mutate(rng, bases[content])
        files.append((f"{k:03d}_{content}_{kind}{rng.choice(suffixes)}", data))
    return files


def outside(root: Path, build: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and build not in p.parents
    }


def test_fuzz_mutated_files_through_merge_and_predict(tmp_path, model_file, monkeypatch):
    """300 mutated files: no traceback, each one a manifest row, a reject or a prediction/skip, nothing outside
    build/."""
    import csv

    import pandas as pd

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(16)
    build = tmp_path / "build"
    folder_members = [
        (f"glioma/{name}", data) for name, data in fuzz_files(tmp_path, rng, 100, [".png", ".jpg", ".mat", ".bmp"])
    ]
    mat_members = fuzz_files(tmp_path, rng, 100, [".mat"])
    write_zip(tmp_path / "folders.zip", folder_members)
    write_zip(tmp_path / "mats.zip", mat_members)
    plain = tmp_path / "uploads"
    plain.mkdir()
    for name, data in fuzz_files(tmp_path, rng, 100, [".png", ".jpg", ".tif"]):
        (plain / name).write_bytes(data)
    for scratch in tmp_path.glob("hostile-*.mat"):
        scratch.unlink()
    before = outside(tmp_path, build)

    sources = {
        "mats": MATS,
        "folders": SourceConfig(format="image_folder", files=[{"name": "folders.zip"}], labels={"glioma": "glioma"}),
    }
    cfg = LIMITS.model_copy(update={"out_dir": Path("build/merged")})
    report = merge_sources(
        {"mats": [tmp_path / "mats.zip"], "folders": [tmp_path / "folders.zip"]}, sources, cfg, workers=1
    )
    with open("build/merged/manifest.csv") as a, open("build/merged/rejects.csv") as b:
        seen = [row["original_path"] for row in csv.DictReader(a)] + [row["original_path"] for row in csv.DictReader(b)]
    images = [f"folders.zip/{name}" for name, _ in folder_members if Path(name).suffix != ".mat"]
    expected = images + [f"mats.zip/{name}" for name, _ in mat_members]
    assert sorted(seen) == sorted(expected)  # every image-like member exactly once, as a row or a reject
    assert report.members == 200 and report.non_image == 200 - len(expected)
    assert 0 < report.images < len(expected) and report.rejected > 0

    result = predict_cli(plain, tmp_path / "folders.zip", "--model", model_file, "--out", "build/predictions.csv")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    table = pd.read_csv("build/predictions.csv", keep_default_na=False)
    predicted = table["file"][table["error"] == ""]
    zipped = [f"{tmp_path / 'folders.zip'}/{name}" for name, _ in folder_members if Path(name).suffix != ".mat"]
    assert sorted(table["file"]) == sorted(
        [str(p) for p in plain.iterdir()] + zipped
    )  # every file once, predicted or skipped
    assert 0 < len(predicted) < len(table)
    assert outside(tmp_path, build) == before  # inputs untouched, nothing written beside them
