"""Write figshare-style MATLAB v7.3 ``.mat`` files, byte for byte reproducibly.

The figshare brain-tumour set (Cheng et al. 2017) ships one MATLAB v7.3 file
per slice. A v7.3 file is an HDF5 file behind a 512-byte user block that
holds MATLAB's text header; MATLAB's own loaders and ``scipy.io`` look at that
header, HDF5 readers skip it. The demo data must be read by the same code as
the real files, so this module writes what MATLAB writes:

- header: ``MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: <date> HDF5
  schema 1.00 .`` padded with spaces to 116 bytes, 8 zero bytes of
  subsystem offset, then the version bytes ``00 02`` and the endian mark
  ``IM`` at offsets 124-127 (``scipy.io.matlab.matfile_version`` reads (2, 0)),
  zeros up to byte 512;
- a group ``cjdata`` (``MATLAB_class`` ``struct``, ``MATLAB_fields`` naming
  its fields) with the datasets ``label``, ``PID``, ``image``,
  ``tumorBorder``, ``tumorMask``, each with the ``MATLAB_class`` attribute
  (a fixed-length ASCII string) and, for ``char`` and ``logical``, an int32
  ``MATLAB_int_decode``; arrays of 4096 elements or more are chunked and
  gzip-compressed, as MATLAB does for large arrays.

Orientation: MATLAB stores arrays column-major and HDF5 row-major, so an
HDF5 reader sees every MATLAB array transposed: a MATLAB ``1xK`` vector is an
HDF5 ``(K, 1)`` dataset, and ``image(row, col)`` sits at ``[col, row]``.
:func:`write_figshare_mat` takes arrays the numpy way (``image[row, col]``)
and stores their transposes, so a reader that transposes what it reads (as a
reader of real figshare files must) gets ``image[row, col]`` back.

Reproducibility: a fixed header date, no object timestamps
(``track_times=False`` for datasets, the same for the group via its creation
property list), and deterministic gzip; the same arrays give the same bytes.
"""

from __future__ import annotations

import io

import h5py
import numpy as np

HEADER_DATE = "Wed Apr  1 12:00:00 2015"
"""The fixed ``Created on`` date, so that the same content gives the same bytes."""

USERBLOCK = 512

FIGSHARE_LABELS: dict[str, int] = {"meningioma": 1, "glioma": 2, "pituitary": 3}
"""``cjdata.label`` codes of the real figshare set."""


def matlab_header() -> bytes:
    """The 128-byte MATLAB v7.3 header: text, subsystem offset, version and endian mark."""
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {HEADER_DATE} HDF5 schema 1.00 .".encode("ascii")
    return text.ljust(116, b" ") + bytes(8) + b"\x00\x02" + b"IM"


def _dataset(group: h5py.Group, name: str, data: np.ndarray, matlab_class: str, int_decode: int | None = None) -> None:
    """Store a numpy ``(rows, cols)`` array as MATLAB would: transposed, with its class attributes."""
    data = np.ascontiguousarray(np.asarray(data).T)
    compress = {"compression": "gzip", "compression_opts": 3, "chunks": True} if data.size >= 4096 else {}
    dataset = group.create_dataset(name, data=data, track_times=False, **compress)
    dataset.attrs.create("MATLAB_class", np.bytes_(matlab_class))
    if int_decode is not None:
        dataset.attrs.create("MATLAB_int_decode", np.int32(int_decode))


def _struct_group(parent: h5py.File, name: str, fields: list[str]) -> h5py.Group:
    """A MATLAB struct: a group without timestamps, ``MATLAB_class`` ``struct`` and its field names."""
    plist = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    plist.set_obj_track_times(False)
    group = h5py.Group(h5py.h5g.create(parent.id, name.encode("ascii"), gcpl=plist))
    group.attrs.create("MATLAB_class", np.bytes_("struct"))
    names = np.empty(len(fields), dtype=object)
    names[:] = [np.frombuffer(field.encode("ascii"), dtype="S1") for field in fields]
    group.attrs.create("MATLAB_fields", names, dtype=h5py.vlen_dtype(np.dtype("S1")))
    return group


def write_figshare_mat(image: np.ndarray, label: int, pid: str, mask: np.ndarray, border: np.ndarray) -> bytes:
    """The bytes of one figshare-style v7.3 ``.mat`` file.

    ``image`` int16 ``(rows, cols)``; ``label`` 1 meningioma, 2 glioma, 3
    pituitary; ``pid`` the patient id (stored as MATLAB ``char``: uint16
    character codes); ``mask`` bool ``(rows, cols)`` (stored as ``logical``,
    uint8); ``border`` float64 outline points ``[r1, c1, r2, c2, ...]`` in
    MATLAB's 1-based (row, column) subscripts, stored as a ``1xK`` vector.
    """
    if image.dtype != np.int16 or image.ndim != 2:
        raise ValueError(f"image must be a 2-D int16 array, got {image.dtype} {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=USERBLOCK) as mat:
        cjdata = _struct_group(mat, "cjdata", ["label", "PID", "image", "tumorBorder", "tumorMask"])
        _dataset(cjdata, "label", np.array([[float(label)]]), "double")
        characters = np.frombuffer(pid.encode("ascii"), dtype=np.uint8).astype(np.uint16)
        _dataset(cjdata, "PID", characters[None, :], "char", 2)
        _dataset(cjdata, "image", image, "int16")
        _dataset(cjdata, "tumorBorder", np.asarray(border, dtype=np.float64)[None, :], "double")
        _dataset(cjdata, "tumorMask", mask.astype(np.uint8), "logical", 1)
    data = bytearray(buffer.getvalue())
    header = matlab_header()
    data[: len(header)] = header
    return bytes(data)
