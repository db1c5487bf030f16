"""Archives of images sorted into class folders (Kaggle sets, SARTAJ, Br35H, the figshare JPEGs).

The label of an image is the source's ``labels[<name of its parent folder>]``,
whatever the folders above it (``Training/glioma/x.jpg`` and
``Testing/glioma/y.jpg`` are both ``glioma``). An image in a folder the map
does not name (``.ipynb_checkpoints``, a stray top-level file) is rejected
rather than guessed.

A ``.txt`` file beside an image with the same stem holds YOLO boxes, one per
line, ``class cx cy w h`` normalised to the image; the first box is kept. An
empty one means "no box" (the redistributors write empty files for images
without a tumour). The box files are read while planning (they are tiny) and
counted as ``annotation`` members; one that cannot be parsed is rejected on
its own and its image is kept without a box. Every other non-image member is
counted as ``directory`` or ``other``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import PurePosixPath

from ...config import ImageLimits, SourceConfig
from ...core.imaging import IMAGE_SUFFIXES, BadImage, decode_image
from ...core.safe_zip import Member, MemberError, Refused, SafeZip
from ...errors import reason
from .base import Box, MemberTask, Rejected, Skipped, SourceImage

BOX_SUFFIX = ".txt"


def parse_yolo_box(text: str) -> Box | None:
    """The first box of a YOLO label file, or None for an empty file; ``ValueError`` if malformed."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    fields = lines[0]
    if len(fields) != 5:
        raise ValueError(f"expected 'class cx cy w h', got {len(fields)} fields")
    int(fields[0])  # the class number; the label comes from the folder, but garbage here means a broken file
    cx, cy, w, h = (float(field) for field in fields[1:])
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (cx, cy, w, h)) or w == 0 or h == 0:
        raise ValueError(f"box {cx} {cy} {w} {h} is not normalised to (0, 1]")
    return cx, cy, w, h


def _stem_key(name: str) -> str:
    """Images and their box files pair up by folder and stem: ``a/b/x.jpg`` and ``a/b/x.txt`` → ``a/b/x``."""
    return str(PurePosixPath(name).with_suffix(""))


def _suffix(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def plan(archive: SafeZip, source_name: str, source: SourceConfig) -> Iterator[MemberTask | Skipped | Rejected]:
    """One record per member, in archive order (see the module docstring for the rules)."""
    members = list(archive.members())
    image_keys = {
        _stem_key(m.name)
        for m in members
        if isinstance(m, Member) and not m.is_dir and _suffix(m.name) in IMAGE_SUFFIXES
    }
    boxes: dict[str, Box | None] = {}
    for member in members:
        original_path = f"{archive.path.name}/{member.name}"
        if isinstance(member, Refused):
            yield Rejected(source_name, original_path, member.reason)
        elif member.is_dir:
            yield Skipped(source_name, original_path, "directory")
        elif _suffix(member.name) == BOX_SUFFIX and _stem_key(member.name) in image_keys:
            try:
                boxes[_stem_key(member.name)] = parse_yolo_box(archive.read(member.index).decode("utf-8-sig"))
            except MemberError as error:
                yield Rejected(source_name, original_path, str(error))
            except ValueError as error:  # includes UnicodeDecodeError
                yield Rejected(source_name, original_path, reason("bad YOLO box", error))
            else:
                yield Skipped(source_name, original_path, "annotation")
        elif _suffix(member.name) not in IMAGE_SUFFIXES:
            yield Skipped(source_name, original_path, "other")
    # Images second, once every box file has been read: a box may come after its image in the archive.
    for member in members:
        if isinstance(member, Member) and not member.is_dir and _suffix(member.name) in IMAGE_SUFFIXES:
            yield _image_task(member, archive, source_name, source, boxes)


def _image_task(
    member: Member, archive: SafeZip, source_name: str, source: SourceConfig, boxes: dict[str, Box | None]
) -> MemberTask | Rejected:
    original_path = f"{archive.path.name}/{member.name}"
    folder = PurePosixPath(member.name).parent.name
    label = source.labels.get(folder)
    if label is None:
        known = ", ".join(sorted(source.labels))
        return Rejected(
            source_name, original_path, reason("unknown folder", f"{folder!r} is not in the labels ({known})")
        )
    return MemberTask(source_name, archive.path, member.index, original_path, label, boxes.get(_stem_key(member.name)))


def load(task: MemberTask, archive: SafeZip, source: SourceConfig, limits: ImageLimits) -> SourceImage | Rejected:
    """Decode one planned image member; the label and box were settled while planning."""
    try:
        pixels = decode_image(archive.read(task.index), task.original_path, limits)
    except MemberError as error:
        return Rejected(task.source, task.original_path, str(error))
    except BadImage as error:
        return Rejected(task.source, task.original_path, error.reason)
    return SourceImage(task.source, task.original_path, task.label, pixels, None, None, task.box)
