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

from ..config import CLASSES, PatientTable
from ..errors import UserError


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


def attach_patients(rows: list[dict[str, str]], source: str, path: Path, spec: PatientTable) -> None:
    """Fill ``patient_id`` and ``patient_fold`` of ``source``'s manifest rows from its table, in place.

    Images the table does not list keep an empty id (the merge report counts
    them); a listed image whose folder label disagrees with the table's is an
    error, not a guess.
    """
    table = read_patient_table(path, spec)
    for row in rows:
        if row["source"] != source:
            continue
        key = PurePosixPath(row["original_path"]).stem
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
