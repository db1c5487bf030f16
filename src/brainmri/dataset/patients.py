"""Patient ids for sources whose files carry none, from a table the source declares (``sources.<name>.patients``).

The figshare JPEG redistribution lost the ``.mat`` files' ``PID``; a table
keyed by file number restores it (``../shared/datasets/figshare-cheng2017-patients.csv``).
A table is trusted only after it is checked: a missing cell, a key given twice
or a label that disagrees with the image's folder stops the merge with one
line naming the file and the line, since a wrong patient id silently breaks
the split's leakage guarantee.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

import pandas as pd

from ..config import CLASSES, PatientSubset, PatientTable
from ..core.safe_zip import BadArchive, Member, MemberError, SafeZip
from ..errors import UserError

MAX_TABLE_BYTES = 64 * 1024 * 1024
"""A patient table read from inside an archive is refused above this size (a table of a million slices is ~50 MB)."""


class PatientTableError(UserError, ValueError):
    """A patient table that cannot be trusted; the message names the file and line."""


def read_patient_table(path: Path | str, spec: PatientTable, data: bytes | None = None) -> pd.DataFrame:
    """The table indexed by its key (text), with columns ``patient_id``, ``label`` (a class or "") and ``fold``.

    ``data``: the table's bytes when it was read from inside an archive (``path`` then only names it in errors).
    Line numbers in errors count the header as line 1, as an editor shows them.
    """
    try:
        raw = pd.read_csv(io.BytesIO(data) if data is not None else path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise PatientTableError(f"{path}: not a readable CSV table ({error.__class__.__name__})") from None
    columns = [spec.key, spec.id, *([spec.label] if spec.label else []), *([spec.fold] if spec.fold else [])]
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise PatientTableError(f"{path}: no column {missing[0]!r} (columns: {', '.join(raw.columns)})")
    raw = raw[columns].apply(lambda column: column.str.strip())
    for column in columns:
        empty = raw.index[raw[column] == ""]
        if len(empty):
            raise PatientTableError(f"{path}: line {empty[0] + 2}: empty {column!r}")
    twice = raw.index[raw[spec.key].duplicated()]
    if len(twice):
        first = raw.index[raw[spec.key] == raw.at[twice[0], spec.key]][0]
        raise PatientTableError(
            f"{path}: line {twice[0] + 2}: {spec.key} {raw.at[twice[0], spec.key]!r} is already on line {first + 2}"
        )
    table = pd.DataFrame(
        {
            "line": raw.index + 2,
            "patient_id": raw[spec.id],
            "label": raw[spec.label].map(lambda v: spec.labels.get(v, "")) if spec.label else "",
            "fold": raw[spec.fold] if spec.fold else "",
        }
    )
    if spec.label:
        unknown = raw.index[table["label"] == ""]
        if len(unknown):
            value = raw.at[unknown[0], spec.label]
            raise PatientTableError(
                f"{path}: line {unknown[0] + 2}: {spec.label} {value!r} is not in the table's labels"
            )
    table.index = raw[spec.key]
    return table


def table_in_zip(path: Path, table: str) -> tuple[str, bytes] | None:
    """``(name, bytes)`` of the one member of zip ``path`` called ``table`` (at any depth), None if there is none.

    Several matches are an error: which table was meant would be a guess.
    """
    try:
        with SafeZip(path, MAX_TABLE_BYTES) as archive:
            found = [
                m
                for m in archive.members()
                if isinstance(m, Member) and not m.is_dir and (m.name == table or m.name.endswith("/" + table))
            ]
            if len(found) > 1:
                raise PatientTableError(
                    f"{path}: several members match the patient table {table!r}: "
                    + ", ".join(m.name for m in found[:3])
                )
            return (f"{path}/{found[0].name}", archive.read(found[0].index)) if found else None
    except (BadArchive, MemberError) as error:
        raise PatientTableError(f"{path}: patient table {table!r} cannot be read: {error}") from None


def source_patient_table(path: Path, spec: PatientTable) -> pd.DataFrame:
    """A source's fetched table (``path``), or with ``spec.member`` that member of the fetched archive ``path``."""
    if spec.member is None:
        return read_patient_table(path, spec)
    found = table_in_zip(path, spec.member)
    if found is None:
        raise PatientTableError(f"{path}: no member {spec.member!r} (the source's patient table)")
    return read_patient_table(found[0], spec, found[1])


def attach_patients(rows: list[dict[str, str]], source: str, path: Path, spec: PatientTable) -> pd.DataFrame:
    """Fill ``patient_id`` and ``patient_fold`` of ``source``'s manifest rows from its table, in place, and return
    the table (for ``outside_subset``).

    Images the table does not list keep an empty id (the merge report counts
    them); a listed image whose folder label disagrees with the table's is an
    error, not a guess. A row is matched by its file name, else by the name's stem.
    """
    table = source_patient_table(path, spec)
    for row in rows:
        if row["source"] != source:
            continue
        original = PurePosixPath(row["original_path"])
        key = original.name if original.name in table.index else original.stem
        if key not in table.index:
            continue
        entry = table.loc[key]
        if entry["label"] and row["label"] in CLASSES and entry["label"] != row["label"]:
            raise PatientTableError(
                f"{path}: line {entry['line']}: label {entry['label']} disagrees with "
                f"{row['original_path']} ({row['label']})"
            )
        row["patient_id"] = entry["patient_id"]
        row["patient_fold"] = entry["fold"]
    return table


def outside_subset(
    rows: list[dict[str, str]], source: str, table: pd.DataFrame, subset: PatientSubset | None
) -> list[dict[str, str]]:
    """The rows of ``source`` that ``subset`` leaves out (patients not kept, or no patient at all).

    The subset is taken over every patient the ``table`` names, not only those
    with an image here, so it does not move when an image is rejected.
    """
    if subset is None:
        return []
    kept = subset.select(table["patient_id"])
    return [row for row in rows if row["source"] == source and row["patient_id"] not in kept]
