"""The figshare brain-tumour set of Cheng et al. (2017): zips of MATLAB v7.3 ``.mat`` files.

A v7.3 ``.mat`` file is HDF5 behind a 512-byte MATLAB header (the "userblock");
h5py reads it straight from memory. Each file holds one slice in the struct
``cjdata``:

- ``image``: int16 slice (512x512 in the real set), windowed to uint8 by
  ``imaging.int16_to_uint8``;
- ``label``: 1, 2 or 3, looked up as the string ``"1"``... in the source's
  ``labels``;
- ``PID``: the patient id as uint16 character codes (becomes ``patient_id``,
  which the split uses to keep a patient's slices together);
- ``tumorMask``: the tumour mask, optional here.

MATLAB stores arrays column-major, so HDF5 sees every 2-D array transposed;
``image`` and ``tumorMask`` are transposed back so that row 0 is the top of
the slice, as in every other source.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import PurePosixPath

import h5py
import numpy as np

from ...config import ImageLimits, SourceConfig
from ...core.imaging import BadImage, check_size, int16_to_uint8
from ...core.safe_zip import MemberError, Refused, SafeZip
from ...errors import reason
from .base import MemberTask, Rejected, Skipped, SourceImage


class BadMat(ValueError):
    """A ``.mat`` member that is not a readable figshare record; the message is a one-line reason."""


def plan(archive: SafeZip, source_name: str, source: SourceConfig) -> Iterator[MemberTask | Skipped | Rejected]:
    """One record per member: ``.mat`` files become tasks, directories and anything else are skipped."""
    for member in archive.members():
        original_path = f"{archive.path.name}/{member.name}"
        if isinstance(member, Refused):
            yield Rejected(source_name, original_path, member.reason)
        elif member.is_dir:
            yield Skipped(source_name, original_path, "directory")
        elif PurePosixPath(member.name).suffix.lower() == ".mat":
            yield MemberTask(source_name, archive.path, member.index, original_path)
        else:
            yield Skipped(source_name, original_path, "other")


def load(task: MemberTask, archive: SafeZip, source: SourceConfig, limits: ImageLimits) -> SourceImage | Rejected:
    """Decode one planned ``.mat`` member."""
    try:
        pixels, label_number, patient_id, mask = read_record(archive.read(task.index), limits)
    except (MemberError, BadMat) as error:
        return Rejected(task.source, task.original_path, str(error))
    except BadImage as error:
        return Rejected(task.source, task.original_path, error.reason)
    label = source.labels.get(label_number)
    if label is None:
        known = ", ".join(sorted(source.labels))
        return Rejected(task.source, task.original_path, reason("unknown label", f"{label_number!r} (known: {known})"))
    return SourceImage(task.source, task.original_path, label, pixels, patient_id, mask, None)


def read_record(data: bytes, limits: ImageLimits) -> tuple[np.ndarray, str, str | None, np.ndarray | None]:
    """``(pixels uint8 HxW, label number as a string, patient id or None, mask bool HxW or None)``.

    Raises ``BadMat`` for anything that is not a figshare record and
    ``BadImage`` for a slice of absurd size (checked before it is read).
    """
    try:
        handle = h5py.File(io.BytesIO(data), "r")
    except OSError:
        raise BadMat(
            reason("not a MATLAB v7.3 file", "no HDF5 signature (corrupt, or an older .mat version)")
        ) from None
    with handle:
        try:
            return _read_cjdata(handle, limits)
        except (BadMat, BadImage):
            raise
        except Exception as error:  # h5py raises KeyError, OSError, TypeError... on damaged or foreign content
            raise BadMat(reason("corrupt .mat", f"{type(error).__name__}: {error}")) from None


LABEL_MAX_ELEMENTS = 16
"""``label`` is one number; a few more elements are tolerated, anything larger is not a figshare record."""
PID_MAX_ELEMENTS = 256
"""``PID`` is a short patient id (up to 7 characters in the real set)."""
UNBOUNDED = 2**63 - 1


def _dataset(handle: h5py.File, name: str, max_elements: int) -> h5py.Dataset | None:
    """The dataset at ``name`` (None if absent), checked from its HDF5 metadata alone before any data is read.

    Refused: a path through a link that is not a plain (hard) link, since
    soft and external links point elsewhere, possibly into another file (links
    are inspected, never followed); external storage, which makes h5py read
    the dataset's bytes from any file on this machine (``/etc/passwd`` as an
    image); a virtual layout, which maps other files (and reads as zeros when
    they are missing); non-numeric types (strings, references, compound); more
    than two dimensions; and more than ``max_elements`` elements, so that a
    tiny file declaring a huge array cannot make the reader allocate it.
    """
    node: h5py.Group | h5py.Dataset = handle
    for part in name.split("/"):
        if not isinstance(node, h5py.Group):
            raise BadMat(reason("corrupt .mat", f"{name}: {node.name} is not a group"))
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise BadMat(
                reason("refused .mat", f"{name} goes through a {type(link).__name__}, not data stored in the file")
            )
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        raise BadMat(reason("corrupt .mat", f"{name} is not a dataset"))
    if node.is_virtual:
        raise BadMat(reason("refused .mat", f"{name} is a virtual dataset (its data lives in other files)"))
    if node.external:
        raise BadMat(reason("refused .mat", f"{name} has external storage (its data lives in other files)"))
    if node.dtype.kind not in "biuf":
        raise BadMat(reason("corrupt .mat", f"{name} has type {node.dtype}, expected numbers"))
    if node.ndim > 2:
        raise BadMat(reason("corrupt .mat", f"{name} has shape {node.shape}, expected at most 2-D"))
    if node.size > max_elements:
        raise BadMat(reason("corrupt .mat", f"{name} declares {node.size} elements, at most {max_elements} expected"))
    return node


def _read_cjdata(handle: h5py.File, limits: ImageLimits) -> tuple[np.ndarray, str, str | None, np.ndarray | None]:
    image = _dataset(handle, "cjdata/image", UNBOUNDED)  # its size is checked as pixels, by check_size below
    label = _dataset(handle, "cjdata/label", LABEL_MAX_ELEMENTS)
    for required, dataset in (("cjdata/image", image), ("cjdata/label", label)):
        if dataset is None:
            raise BadMat(reason("corrupt .mat", f"no {required}"))
    if image.ndim != 2:
        raise BadMat(reason("corrupt .mat", f"cjdata/image has shape {image.shape}, expected 2-D"))
    width, height = image.shape  # column-major: HDF5 sees (columns, rows)
    check_size(width, height, limits)
    pid = _dataset(handle, "cjdata/PID", PID_MAX_ELEMENTS)
    mask = _dataset(handle, "cjdata/tumorMask", limits.max_pixels)
    if mask is not None and mask.shape != image.shape:
        raise BadMat(reason("corrupt .mat", f"tumorMask is {mask.shape[::-1]}, image is {image.shape[::-1]}"))

    pixels = int16_to_uint8(image[()].T)
    values = np.asarray(label[()]).ravel()
    if values.size == 0:
        raise BadMat(reason("corrupt .mat", "cjdata/label is empty"))
    label_value = float(values[0])
    if not label_value.is_integer():
        raise BadMat(reason("corrupt .mat", f"cjdata/label is {label_value}, expected a whole number"))
    patient_id = None
    if pid is not None:
        patient_id = "".join(chr(code) for code in np.asarray(pid[()]).ravel()).strip() or None
    return pixels, str(int(label_value)), patient_id, (np.asarray(mask[()]).T != 0) if mask is not None else None
