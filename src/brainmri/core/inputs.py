"""The input enumerator of ``predict`` and the external sets: image files, folders and zip archives, read untrusted.

Every image-like input becomes ``(name, bytes, error)``: folders are searched recursively for ``IMAGE_SUFFIXES``,
zips are read member by member through ``SafeZip``, and a plain file larger than a zip member may be is refused
unread, so one input's memory is bounded the same way whatever its kind. Nothing is decoded here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..config import ImageLimits
from ..errors import reason
from .imaging import IMAGE_SUFFIXES
from .safe_zip import BadArchive, MemberError, Refused, SafeZip

INPUT_LIMITS = ImageLimits(min_side=8)
"""New images (predict, external sets) may be smaller than the curated set's (min side 8); the bomb guards stay."""


def iter_inputs(inputs: list[Path]) -> Iterator[tuple[str, bytes | None, str]]:
    """Yield ``(name, bytes, error)`` for every image-like input; ``bytes`` is None when it cannot be read."""
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for file in files:
                yield _read_file(file)
        elif item.suffix.lower() == ".zip" and item.is_file():
            yield from _zip_members(item)
        elif item.is_file():
            yield _read_file(item)
        elif item.exists():
            yield str(item), None, reason("not a regular file", "a device, pipe or socket is not read")
        else:
            yield str(item), None, "not found"


def _read_file(path: Path) -> tuple[str, bytes | None, str]:
    """One plain file's bytes, refused unread when larger than a zip member may be (the same memory bound)."""
    try:
        size = path.stat().st_size
        if size > INPUT_LIMITS.max_member_bytes:
            return (
                str(path),
                None,
                reason("oversize file", f"{size} bytes > max_member_bytes {INPUT_LIMITS.max_member_bytes}"),
            )
        return str(path), path.read_bytes(), ""
    except OSError as error:
        return str(path), None, reason("unreadable file", error.strerror or error)


def _zip_members(path: Path) -> Iterator[tuple[str, bytes | None, str]]:
    try:
        archive = SafeZip(path, INPUT_LIMITS.max_member_bytes)
    except BadArchive as error:
        yield str(path), None, str(error)
        return
    with archive:
        for member in archive.members():
            name = f"{path}/{member.name}"
            if isinstance(member, Refused):
                yield name, None, member.reason
            elif not member.is_dir and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                try:
                    yield name, archive.read(member.index), ""
                except MemberError as error:
                    yield name, None, str(error)
