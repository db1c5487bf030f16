"""Read zip archives member by member without trusting them.

Archives come from strangers, so each member is checked from the central
directory (no data read) before any byte of it is decompressed:

- paths that would escape an extraction folder (absolute, drive letters,
  ``..``: "zip-slip") are refused, even though nothing here extracts by member
  name, so that any later tool that does extract the same list is safe;
- symlink members (Unix mode bits in ``external_attr``) are refused: they
  point outside the archive and carry no image;
- members whose uncompressed size exceeds ``max_member_bytes`` are refused.
  ``zipfile`` never returns more bytes than the header's size (a header that
  lies fails the CRC check instead), so this one check bounds the memory one
  member can take: reading stays flat however large the archive grows;
- encrypted members and repeated names are refused (a repeated name would
  make two inputs share one provenance).

Names are decoded the way archivers actually write them: UTF-8 when the
archive says so (flag bit 11); otherwise many tools still write UTF-8 without
the flag, so the raw bytes are tried as UTF-8 first and fall back to the zip
standard's cp437, which decodes any byte string. Backslashes (written by some
Windows tools) become ``/``.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import reason

UTF8_FLAG = 0x800
ENCRYPTED_FLAG = 0x1
_DRIVE = re.compile(r"^[A-Za-z]:")


class BadArchive(Exception):
    """The archive as a whole cannot be read (not a zip, truncated central directory)."""


class MemberError(Exception):
    """One member's data cannot be read; the message is a one-line reason."""


@dataclass(frozen=True)
class Member:
    """A member that passed the checks; ``name`` is its decoded, ``/``-separated path."""

    index: int
    name: str
    is_dir: bool


@dataclass(frozen=True)
class Refused:
    """A member refused from its header alone."""

    name: str
    reason: str


def decode_name(info: zipfile.ZipInfo) -> str:
    """The member's path as its author meant it (see the module docstring for the order tried)."""
    name = info.filename
    if not info.flag_bits & UTF8_FLAG:
        raw = name.encode("cp437")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return name.replace("\\", "/")


def refusal(info: zipfile.ZipInfo, name: str, max_member_bytes: int) -> str | None:
    """Why a member must not be read, or None if it may be."""
    if name.startswith("/") or _DRIVE.match(name):
        return reason("zip-slip", "absolute path")
    if ".." in name.split("/"):
        return reason("zip-slip", "path escapes the archive root with '..'")
    if stat.S_ISLNK(info.external_attr >> 16):
        return reason("symlink member", "symbolic links are not followed")
    if info.flag_bits & ENCRYPTED_FLAG:
        return reason("encrypted member", "cannot be read without a password")
    if info.file_size > max_member_bytes:
        return reason("oversize member", f"{info.file_size} bytes uncompressed > max_member_bytes {max_member_bytes}")
    return None


class SafeZip:
    """A zip archive opened for checked, one-member-at-a-time reading."""

    def __init__(self, path: Path, max_member_bytes: int) -> None:
        self.path = Path(path)
        self.max_member_bytes = max_member_bytes
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise BadArchive(reason("unreadable archive", error)) from None
        self._infos = self._zip.infolist()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """The number of members, counted from the central directory (what every report must account for)."""
        return len(self._infos)

    def close(self) -> None:
        self._zip.close()

    def members(self) -> Iterator[Member | Refused]:
        """Every member, in archive order, as a ``Member`` or a ``Refused``; reads no member data."""
        seen: set[str] = set()
        for index, info in enumerate(self._infos):
            name = decode_name(info)
            why = refusal(info, name, self.max_member_bytes)
            if why is None and name in seen:
                why = reason("duplicate member", "an earlier member has the same name")
            seen.add(name)
            yield Refused(name, why) if why else Member(index, name, info.is_dir())

    def read(self, index: int) -> bytes:
        """The bytes of member ``index``; ``MemberError`` if it is refused, fails to decompress or fails its CRC."""
        info = self._infos[index]
        why = refusal(info, decode_name(info), self.max_member_bytes)  # callers may skip members()
        if why:
            raise MemberError(why)
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
            raise MemberError(reason("corrupt member", error)) from None
