"""Source readers: one module per archive format, chosen by ``SourceConfig.format``.

Each format module provides ``plan(archive, source_name, source)`` (cheap,
metadata only: every member becomes a ``MemberTask``, ``Skipped`` or
``Rejected``) and ``load(task, archive, source, limits)`` (decode one task
into a ``SourceImage`` or ``Rejected``). ``read_archive`` chains the two in
one process; ``brainmri.dataset.merge`` runs the loads in a process pool. Adding a
format means adding one module with these two functions and one entry in
``FORMATS`` (and in ``config.SOURCE_FORMATS``, which a test keeps equal).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ...config import ImageLimits, SourceConfig
from ...core.safe_zip import BadArchive, SafeZip
from . import figshare_mat, image_folder
from .base import MemberTask, Rejected, Skipped, SourceImage

FORMATS = {"figshare_mat": figshare_mat, "image_folder": image_folder}

__all__ = [
    "FORMATS",
    "BadArchive",
    "MemberTask",
    "Rejected",
    "SafeZip",
    "Skipped",
    "SourceImage",
    "load_member",
    "plan_archive",
    "read_archive",
]


def plan_archive(archive: SafeZip, source_name: str, source: SourceConfig) -> Iterator[MemberTask | Skipped | Rejected]:
    """Every member of an opened archive as exactly one task, skip or reject, reading no image data."""
    return FORMATS[source.format].plan(archive, source_name, source)


def load_member(
    task: MemberTask, archive: SafeZip, source: SourceConfig, limits: ImageLimits
) -> SourceImage | Rejected:
    """Decode one planned member of ``archive`` (which must be the archive ``task`` was planned from)."""
    return FORMATS[source.format].load(task, archive, source, limits)


def read_archive(
    path: Path, source_name: str, source: SourceConfig, limits: ImageLimits
) -> Iterator[SourceImage | Rejected]:
    """Every image of one archive, decoded in this process, or the reason it was refused.

    Non-image members (directories, READMEs, box files) are not yielded; use
    ``plan_archive`` to see them. An archive that is not a readable zip yields
    one ``Rejected`` for the archive itself.
    """
    path = Path(path)
    try:
        archive = SafeZip(path, limits.max_member_bytes)
    except BadArchive as error:
        yield Rejected(source_name, path.name, str(error))
        return
    with archive:
        for item in plan_archive(archive, source_name, source):
            if isinstance(item, MemberTask):
                yield load_member(item, archive, source, limits)
            elif isinstance(item, Rejected):
                yield item
