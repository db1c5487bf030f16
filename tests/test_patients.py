"""Patient ids from a source's patient table: fetched with the archives, checked, filled in by merge."""

from __future__ import annotations

import csv
import io

import h5py
import numpy as np
import pytest
from PIL import Image

from brainmri.config import FetchConfig, MergeConfig, PatientTable, SourceConfig, SyntheticConfig
from brainmri.dataset.fetch import fetch_sources, fetched_archives, fetched_patient_tables
from brainmri.dataset.merge import merge_sources
from brainmri.dataset.patients import PatientTableError, read_patient_table
from conftest import write_zip

TABLE_SPEC = {
    "name": "patients.csv",
    "key": "number",
    "id": "pid",
    "label": "label",
    "fold": "fold",
    "labels": {"1": "meningioma", "2": "glioma", "3": "pituitary"},
}


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def mat(number: int, label: int, pid: str) -> bytes:
    image = np.full((40, 48), 100 + number, dtype=np.int16)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=512) as handle:
        group = handle.create_group("cjdata")
        group["image"] = image.T
        group["label"] = np.array([[float(label)]])
        group["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
    return buffer.getvalue()


# number, .mat label, patient, fold: numbers 1-2 are one glioma patient, 3 a meningioma patient, 4 a pituitary one
ROWS = [(1, 2, "P7", 1), (2, 2, "P7", 1), (3, 1, "P9", 2), (4, 3, "P5", 3)]
FOLDER_OF_LABEL = {1: "1", 2: "2", 3: "0"}  # the JPEG redistribution's folders: 0 pituitary, 1 meningioma, 2 glioma


def write_table(path, rows=ROWS, header="number,label,pid,fold"):
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def jpg_source(**patients) -> SourceConfig:
    return SourceConfig(
        format="image_folder",
        files=[{"name": "jpgs.zip"}],
        labels={"0": "pituitary", "1": "meningioma", "2": "glioma"},
        patients={**TABLE_SPEC, **patients},
    )


def merge_jpgs(tmp_path, table, members=None):
    members = members or [(f"set/{FOLDER_OF_LABEL[label]}/{number}.jpg", jpeg(number)) for number, label, _, _ in ROWS]
    archive = write_zip(tmp_path / "jpgs.zip", members)
    out = tmp_path / "merged"
    report = merge_sources(
        {"jpgs": [archive]},
        {"jpgs": jpg_source()},
        MergeConfig(out_dir=out, min_side=8),
        workers=1,
        patient_tables={"jpgs": table},
    )
    with (out / "manifest.csv").open() as handle:
        return report, list(csv.DictReader(handle))


def test_merge_fills_patient_ids_and_folds_from_the_table_and_counts_images_without_one(tmp_path):
    table = write_table(tmp_path / "patients.csv")
    members = [(f"set/{FOLDER_OF_LABEL[label]}/{number}.jpg", jpeg(number)) for number, label, _, _ in ROWS]
    members.append(("set/2/999.jpg", jpeg(999)))  # not in the table
    report, rows = merge_jpgs(tmp_path, table, members)
    by_number = {row["original_path"].rsplit("/", 1)[1]: row for row in rows}
    assert {k: (v["patient_id"], v["patient_fold"]) for k, v in by_number.items()} == {
        "1.jpg": ("P7", "1"),
        "2.jpg": ("P7", "1"),
        "3.jpg": ("P9", "2"),
        "4.jpg": ("P5", "3"),
        "999.jpg": ("", ""),
    }
    assert report.sources["jpgs"].without_patient_id == 1


def test_mat_pids_and_the_table_give_the_same_patients(tmp_path):
    """The `public` set reads cjdata.PID, the mirror reads the table: both must name the same patients."""
    mats = write_zip(tmp_path / "mats.zip", [(f"{n}.mat", mat(n, label, pid)) for n, label, pid, _ in ROWS])
    jpg_members = [(f"set/{FOLDER_OF_LABEL[label]}/{number}.jpg", jpeg(number)) for number, label, _, _ in ROWS]
    jpgs = write_zip(tmp_path / "jpgs.zip", jpg_members)
    mat_source = SourceConfig(
        format="figshare_mat", files=[{"name": "mats.zip"}], labels={"1": "meningioma", "2": "glioma", "3": "pituitary"}
    )
    merge_sources(
        {"mats": [mats], "jpgs": [jpgs]},
        {"mats": mat_source, "jpgs": jpg_source()},
        MergeConfig(out_dir=tmp_path / "out", min_side=8),
        workers=1,
        patient_tables={"jpgs": write_table(tmp_path / "patients.csv")},
    )
    with (tmp_path / "out" / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    number = lambda row: row["original_path"].rsplit("/", 1)[1].split(".")[0]  # noqa: E731
    from_mat = {number(r): (r["patient_id"], r["label"]) for r in rows if r["source"] == "mats"}
    from_table = {number(r): (r["patient_id"], r["label"]) for r in rows if r["source"] == "jpgs"}
    assert from_mat == from_table and len(from_mat) == 4


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(1, 2, "P7", 1), (2, 2, "", 1)], "line 3: empty 'pid'"),
        ([(1, 2, "P7", 1), ("", 2, "P7", 1)], "line 3: empty 'number'"),
        ([(1, 2, "P7", 1), (2, 2, "P7", 1), (1, 2, "P8", 1)], "line 4: number '1' is already on line 2"),
        ([(1, 2, "P7", 1), (2, 9, "P7", 1)], "line 3: label '9' is not in the table's labels"),
    ],
)
def test_a_broken_table_is_one_line_naming_file_and_line(tmp_path, rows, message):
    path = write_table(tmp_path / "patients.csv", rows)
    with pytest.raises(PatientTableError) as error:
        read_patient_table(path, PatientTable(**TABLE_SPEC))
    assert str(error.value) == f"{path}: {message}"


def test_a_missing_column_or_an_unreadable_table_is_named(tmp_path):
    path = write_table(tmp_path / "patients.csv", header="number,label,patient,fold")
    with pytest.raises(
        PatientTableError, match=r"patients.csv: no column 'pid' \(columns: number, label, patient, fold\)"
    ):
        read_patient_table(path, PatientTable(**TABLE_SPEC))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\x00\xc3")
    with pytest.raises(PatientTableError, match="binary.csv"):
        read_patient_table(binary, PatientTable(**TABLE_SPEC))


def test_a_label_that_disagrees_with_the_folder_stops_the_merge(tmp_path):
    rows = [(1, 2, "P7", 1), (2, 1, "P7", 1), (3, 1, "P9", 2), (4, 3, "P5", 3)]  # 2.jpg is in the glioma folder
    table = write_table(tmp_path / "patients.csv", rows)
    members = [("set/2/1.jpg", jpeg(1)), ("set/2/2.jpg", jpeg(2))]
    with pytest.raises(PatientTableError) as error:
        merge_jpgs(tmp_path, table, members)
    assert str(error.value) == f"{table}: line 3: label meningioma disagrees with jpgs.zip/set/2/2.jpg (glioma)"


def test_fetch_brings_the_table_beside_the_archives_and_keeps_it_out_of_the_archive_list(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_zip(mirror / "jpgs.zip", [("set/2/1.jpg", jpeg(1))])
    write_table(mirror / "patients.csv")
    cfg = FetchConfig(data_dir=tmp_path / "data", mirrors=[mirror], out_dir=tmp_path / "raw")
    fetch_sources({"jpgs": jpg_source()}, cfg, SyntheticConfig())
    assert fetched_archives(cfg.out_dir) == {"jpgs": [cfg.out_dir / "jpgs" / "jpgs.zip"]}
    assert fetched_patient_tables(cfg.out_dir) == {"jpgs": cfg.out_dir / "jpgs" / "patients.csv"}


def test_a_label_column_without_its_map_is_refused_by_config():
    with pytest.raises(ValueError, match="needs 'labels'"):
        PatientTable(name="p.csv", label="label")
    with pytest.raises(ValueError, match="unknown label"):
        PatientTable(name="p.csv", label="label", labels={"1": "tumor_unknown"})


# A TCGA-like set: the patient table is a member of the archive itself, keyed by full file name
TCGA_ROWS = [("tumour", "A_1.jpg", "A"), ("no_tumour", "A_2.jpg", "A"), ("tumour", "B_1.jpg", "B")]
TCGA_ROWS += [("no_tumour", "C_1.jpg", "C"), ("tumour", "D_1.jpg", "D"), ("no_tumour", "D_2.jpg", "D")]


def tcga_like_source(**subset) -> SourceConfig:
    return SourceConfig(
        format="image_folder",
        files=[{"name": "tcga.zip"}],
        labels={"tumour": "glioma", "no_tumour": "no_tumor"},
        patients={
            "name": "tcga.zip",
            "member": "slices.csv",
            "key": "file",
            "id": "patient",
            "label": "label",
            "labels": {"tumour": "glioma", "no_tumour": "no_tumor"},
            **({"subset": subset} if subset else {}),
        },
    )


def tcga_like_zip(path, extra=()):
    table = "label,file,patient\n" + "".join(f"{label},{name},{patient}\n" for label, name, patient in TCGA_ROWS)
    members = [(f"tcga/{label}/{name}", jpeg(k)) for k, (label, name, _) in enumerate(TCGA_ROWS)]
    return write_zip(path, [*members, *extra, ("tcga/slices.csv", table.encode())])


def test_a_table_inside_the_archive_is_fetched_once_and_a_subset_keeps_every_other_patient(tmp_path):
    """TCGA trains on patients A and C (sorted positions 0, 2); B and D, and an image no row names, are left out."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tcga_like_zip(mirror / "tcga.zip", extra=[("tcga/tumour/E_1.jpg", jpeg(99))])
    source = tcga_like_source(every=2, keep=0)
    cfg = FetchConfig(data_dir=tmp_path / "data", mirrors=[mirror], out_dir=tmp_path / "raw")
    fetch_sources({"tcga": source}, cfg, SyntheticConfig())
    assert sorted(p.name for p in (cfg.out_dir / "tcga").iterdir()) == ["tcga.zip"]
    assert fetched_archives(cfg.out_dir) == {"tcga": [cfg.out_dir / "tcga" / "tcga.zip"]}
    assert fetched_patient_tables(cfg.out_dir) == {"tcga": cfg.out_dir / "tcga" / "tcga.zip"}

    out = tmp_path / "merged"
    report = merge_sources(
        fetched_archives(cfg.out_dir),
        {"tcga": source},
        MergeConfig(out_dir=out, min_side=8),
        workers=1,
        patient_tables=fetched_patient_tables(cfg.out_dir),
    )
    with (out / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["original_path"].rsplit("/", 1)[1], r["patient_id"], r["label"]) for r in rows} == {
        ("A_1.jpg", "A", "glioma"),
        ("A_2.jpg", "A", "no_tumor"),
        ("C_1.jpg", "C", "no_tumor"),
    }
    counts = report.sources["tcga"]
    assert (counts.members, counts.images, counts.outside_patient_subset, counts.without_patient_id) == (8, 3, 4, 0)
    assert sum(counts.non_image.values()) == 1  # slices.csv, the eighth member
    assert sorted(p.name for p in (out / "images" / "tcga").iterdir()) == sorted(f"{r['image_id']}.png" for r in rows)


def test_the_two_halves_of_a_set_share_no_patient_and_cover_all(tmp_path):
    """The training source (keep 0) and the external set (keep 1) split the table's patients between them."""
    from brainmri.config import ExternalPatients, ExternalSetConfig, PatientSubset
    from brainmri.evaluation.external import read_external

    path = tcga_like_zip(tmp_path / "tcga.zip")
    labels = {"tumour": "tumor_unknown", "no_tumour": "no_tumor"}
    halves = []
    for keep in (0, 1):
        subset = PatientSubset(every=2, keep=keep)
        spec = ExternalSetConfig(name="t", path=path, labels=labels, patients=ExternalPatients(subset=subset))
        data = read_external(spec)
        halves.append(set(data.rows["patient"]))
        assert data.counts["outside_patient_subset"] == len(TCGA_ROWS) - len(data.rows)
    assert halves == [{"A", "C"}, {"B", "D"}]


def test_a_subset_or_a_member_table_that_cannot_work_is_refused_by_config():
    from brainmri.config import PatientSubset

    with pytest.raises(ValueError, match=r"keep \(2\) must be below every \(2\)"):
        PatientSubset(every=2, keep=2)
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        PatientSubset(every=1, keep=0)
    spec = tcga_like_source().patients.model_dump()
    with pytest.raises(ValueError, match="member 'slices.csv' is read from other.zip, which is not one of the source"):
        SourceConfig(
            format="image_folder",
            files=[{"name": "tcga.zip"}],
            labels={"tumour": "glioma"},
            patients={**spec, "name": "other.zip"},
        )


def test_a_missing_member_table_is_one_line(tmp_path):
    from brainmri.dataset.patients import source_patient_table

    path = write_zip(tmp_path / "tcga.zip", [("tcga/tumour/A_1.jpg", jpeg(1))])
    with pytest.raises(PatientTableError, match=r"tcga.zip: no member 'slices.csv' \(the source's patient table\)"):
        source_patient_table(path, tcga_like_source().patients)
