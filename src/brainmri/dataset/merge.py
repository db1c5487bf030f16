"""The merge stage's library: all archives of all sources → one folder of normalised images and a manifest.

Outputs under ``cfg.out_dir``:

- ``images/<source>/<image_id>.png``: 8-bit grey PNG at the source's
  resolution (the convention of ``brainmri.core.imaging``);
- ``masks/<image_id>.png``: 8-bit PNG, 255 inside the tumour, 0 outside, the
  same size as its image, where the source has a mask (figshare ``.mat``);
- ``manifest.csv``: one row per image, columns ``MANIFEST_COLUMNS``, sorted by
  ``(source, original_path)``;
- ``rejects.csv``: one row per refused input, columns ``REJECT_COLUMNS``,
  sorted the same way.

Every member of every archive is accounted for exactly once: a manifest row, a
reject, or a counted non-image member (directory, box file, README...); the
report carries these counts and ``merge_sources`` checks that they add up.

Work is split so it can use every core with flat memory: the archives are
*planned* in this process from their central directories (no image data
read), then the members are decoded, normalised and written by a pool of
worker processes, each of which opens the archives itself and returns only a
small manifest row. Rows and rejects are sorted before writing, so the
outputs are byte-identical from run to run and for any number of workers (PNG
encoding is deterministic and Pillow writes no timestamps). Spawned workers
re-import the caller's main script: a script that calls ``merge_sources``
needs the usual ``if __name__ == "__main__":`` guard.
``image_id`` is derived from the source name and the original path only, so
it is stable across runs and machines.

Outputs are built in a sibling staging folder (``.<out_dir name>.partial``)
and put in ``out_dir``'s place only once complete, so a run that fails or is
killed half-way leaves the previous outputs whole (``manifest.csv`` never
names images that are gone). A worker killed by the OOM killer or a signal
ends the run with one ``MergeError`` line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..config import MergeConfig, SourceConfig
from ..core.imaging import encode_png, pixel_sha256
from ..errors import UserError
from .patients import attach_patients, outside_subset
from .sources import BadArchive, MemberTask, Rejected, SafeZip, Skipped, SourceImage, load_member, plan_archive

MANIFEST_COLUMNS = (
    "image_id",
    "path",
    "label",
    "source",
    "original_path",
    "patient_id",
    "patient_fold",
    "sha256",
    "width",
    "height",
    "mask_path",
    "box",
)
REJECT_COLUMNS = ("source", "original_path", "reason")


class MergeError(UserError, RuntimeError):
    """The merge could not finish; the message is one line and the previous outputs are untouched."""


def make_image_id(source: str, original_path: str) -> str:
    """``<source>-<first 12 hex digits of sha1(original_path)>``: stable, file-name safe, unique in practice."""
    return f"{source}-{hashlib.sha1(original_path.encode('utf-8')).hexdigest()[:12]}"


def reject_category(reason: str) -> str:
    """The fixed part of a ``"<category>: <detail>"`` reason, which reports count by."""
    return reason.split(":", 1)[0]


@dataclass
class SourceCounts:
    """What happened to one source's members:
    ``images + outside_patient_subset + rejected + sum(non_image) == members + unreadable_archives``."""

    archives: int = 0
    unreadable_archives: int = 0
    members: int = 0
    images: int = 0
    without_patient_id: int = 0
    outside_patient_subset: int = 0
    rejected: int = 0
    non_image: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def accounted(self) -> bool:
        left_out = self.outside_patient_subset + self.rejected + sum(self.non_image.values())
        return self.images + left_out == self.members + self.unreadable_archives


@dataclass
class MergeReport:
    """Counts per source and in total; everything but ``wall_seconds`` is reproducible."""

    sources: dict[str, SourceCounts]
    classes: dict[str, int]
    reject_reasons: dict[str, int]
    members: int
    images: int
    rejected: int
    non_image: int
    wall_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def merge_sources(
    archives: dict[str, list[Path]],
    sources: dict[str, SourceConfig],
    cfg: MergeConfig,
    workers: int | None = None,
    patient_tables: dict[str, Path] | None = None,
) -> MergeReport:
    """Merge ``archives`` (source name → its archive files) into ``cfg.out_dir``; see the module docstring.

    On success ``cfg.out_dir`` holds exactly this run's outputs (it replaces
    the previous folder whole); on failure the previous folder is untouched.
    ``workers`` defaults to ``os.cpu_count()``; 1 runs everything in this process.
    ``patient_tables`` (source name → fetched table) fills the patient ids of
    sources that declare one (``brainmri.dataset.patients``).
    """
    started = time.perf_counter()
    _check_inputs(archives, sources)
    out_dir = Path(cfg.out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)  # left by a run that was killed
    try:
        report = _merge_into(staging, archives, sources, cfg, workers, patient_tables or {})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace_folder(staging, out_dir)
    report.wall_seconds = round(time.perf_counter() - started, 3)
    return report


def _merge_into(
    staging: Path,
    archives: dict[str, list[Path]],
    sources: dict[str, SourceConfig],
    cfg: MergeConfig,
    workers: int | None,
    patient_tables: dict[str, Path],
) -> MergeReport:
    """The whole merge, written under ``staging`` with manifest paths that name ``cfg.out_dir``."""
    for source in archives:
        (staging / "images" / source).mkdir(parents=True, exist_ok=True)
    (staging / "masks").mkdir(parents=True, exist_ok=True)

    counts = {source: SourceCounts() for source in sorted(archives)}
    tasks: list[MemberTask] = []
    rejects: list[Rejected] = []
    for source in sorted(archives):
        for path in sorted(archives[source], key=lambda p: Path(p).name):
            _plan(Path(path), source, sources[source], cfg, counts[source], tasks, rejects)
    tasks = _leave_out_excluded(tasks, sources, rejects)

    rows: list[dict[str, str]] = []
    workers = min(workers or os.cpu_count() or 1, max(1, len(tasks)))
    results = _process(tasks, {name: sources[name] for name in archives}, cfg, staging, workers)
    try:
        for result in tqdm(results, total=len(tasks), desc="merge", unit="img", mininterval=1.0):
            (rejects if isinstance(result, Rejected) else rows).append(result)
    except BrokenProcessPool:
        raise MergeError(
            f"merge: a worker process died (killed by the OOM killer or a signal?); {cfg.out_dir} is left as it was. "
            "Rerun, with more memory or fewer processes"
        ) from None

    for source, table in sorted(patient_tables.items()):
        if source in archives:
            frame = attach_patients(rows, source, table, sources[source].patients)
            left_out = outside_subset(rows, source, frame, sources[source].patients.subset)
            _unstage(left_out, staging, cfg.out_dir)
            counts[source].outside_patient_subset = len(left_out)
            dropped = {row["image_id"] for row in left_out}
            rows = [row for row in rows if row["image_id"] not in dropped]
    rows.sort(key=lambda row: (row["source"], row["original_path"]))
    rejects.sort(key=lambda r: (r.source, r.original_path, r.reason))
    _write_csv(staging / "manifest.csv", MANIFEST_COLUMNS, rows)
    _write_csv(staging / "rejects.csv", REJECT_COLUMNS, [asdict(r) for r in rejects])
    return _report(counts, rows, rejects, 0.0)


def _leave_out_excluded(
    tasks: list[MemberTask], sources: dict[str, SourceConfig], rejects: list[Rejected]
) -> list[MemberTask]:
    """The tasks less the members their source's ``exclude`` lists, which become rejects ``excluded: <reason>``.

    A listed member that no readable archive of the source holds is an error:
    a typo or another release of the archive would otherwise leave the image in.
    """
    kept, listed = [], set()
    for task in tasks:
        reason = sources[task.source].exclude.get(task.original_path)
        if reason is None:
            kept.append(task)
        else:
            rejects.append(Rejected(task.source, task.original_path, f"excluded: {reason}"))
            listed.add((task.source, task.original_path))
    planned = {(task.source, task.original_path.split("/", 1)[0]) for task in tasks}
    for source in sorted({task.source for task in tasks}):
        missing = sorted(
            path
            for path in sources[source].exclude
            if (source, path) not in listed and (source, path.split("/", 1)[0]) in planned
        )
        if missing:
            raise MergeError(
                f"sources.{source}.exclude: {missing[0]} is not an image member of its archive"
                + (f" ({len(missing) - 1} more such)" if len(missing) > 1 else "")
            )
    return kept


def _unstage(rows: list[dict[str, str]], staging: Path, out_dir: Path) -> None:
    """Delete the staged image and mask files of ``rows`` (their manifest paths name ``out_dir``, not ``staging``)."""
    for row in rows:
        for column in ("path", "mask_path"):
            if row[column]:
                (staging / Path(row[column]).relative_to(out_dir.as_posix())).unlink()


def _replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` in ``target``'s place; the old one is removed only after it has moved aside."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _check_inputs(archives: dict[str, list[Path]], sources: dict[str, SourceConfig]) -> None:
    """Refuse inputs whose provenance would be ambiguous (same archive name twice in a source) or unconfigured."""
    for source, paths in archives.items():
        if source not in sources:
            raise ValueError(f"archives given for source {source!r}, which has no configuration")
        names = Counter(Path(p).name for p in paths)
        twice = sorted(name for name, n in names.items() if n > 1)
        if twice:
            raise ValueError(f"source {source!r} has several archives named {twice}; original paths would collide")


def _plan(
    path: Path,
    source_name: str,
    source: SourceConfig,
    cfg: MergeConfig,
    counts: SourceCounts,
    tasks: list[MemberTask],
    rejects: list[Rejected],
) -> None:
    """Plan one archive into ``tasks``/``rejects`` and count its members and non-image members."""
    counts.archives += 1
    try:
        archive = SafeZip(path, cfg.max_member_bytes)
    except BadArchive as error:
        counts.unreadable_archives += 1
        rejects.append(Rejected(source_name, path.name, str(error)))
        return
    with archive:
        counts.members += len(archive)
        non_image = Counter(counts.non_image)
        for item in plan_archive(archive, source_name, source):
            if isinstance(item, MemberTask):
                tasks.append(item)
            elif isinstance(item, Skipped):
                non_image[item.kind] += 1
            else:
                rejects.append(item)
        counts.non_image = dict(sorted(non_image.items()))


class _ImageWriter:
    """Decodes one task and writes its PNGs; one per process, keeping that process's archives open."""

    def __init__(self, sources: dict[str, SourceConfig], cfg: MergeConfig, staging: Path) -> None:
        self.sources = sources
        self.cfg = cfg
        self.staging = staging
        self.archives: dict[Path, SafeZip] = {}

    def __call__(self, task: MemberTask) -> dict[str, str] | Rejected:
        if task.archive not in self.archives:
            self.archives[task.archive] = SafeZip(task.archive, self.cfg.max_member_bytes)
        item = load_member(task, self.archives[task.archive], self.sources[task.source], self.cfg)
        return item if isinstance(item, Rejected) else write_image(item, Path(self.cfg.out_dir), self.staging)

    def close(self) -> None:
        for archive in self.archives.values():
            archive.close()


_worker: _ImageWriter | None = None


def _start_worker(sources: dict[str, SourceConfig], cfg: MergeConfig, staging: Path) -> None:
    global _worker
    _worker = _ImageWriter(sources, cfg, staging)


def _work(task: MemberTask) -> dict[str, str] | Rejected:
    return _worker(task)


def _process(
    tasks: list[MemberTask], sources: dict[str, SourceConfig], cfg: MergeConfig, staging: Path, workers: int
) -> Iterator[dict[str, str] | Rejected]:
    """Results of all tasks, in task order.

    Workers are spawned, not forked, so they inherit no thread or open file of
    the caller (which may hold torch or tqdm threads); chunks keep the
    inter-process traffic to a few messages per worker. A worker that dies
    (a decoder crash, the OOM killer) raises ``BrokenProcessPool`` here
    instead of hanging, as ``multiprocessing.Pool`` would.
    """
    if workers <= 1:
        writer = _ImageWriter(sources, cfg, staging)
        try:
            yield from map(writer, tasks)
        finally:
            writer.close()
        return
    chunksize = max(1, min(64, len(tasks) // (workers * 8)))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(sources, cfg, staging)) as pool:
        yield from pool.map(_work, tasks, chunksize=chunksize)


def write_image(image: SourceImage, out_dir: Path, write_dir: Path | None = None) -> dict[str, str]:
    """Write an image (and its mask) under ``write_dir`` (default ``out_dir``) and return its manifest row,
    whose paths name ``out_dir``, where the files end up."""
    write_dir = write_dir or out_dir
    image_id = make_image_id(image.source, image.original_path)
    relative = Path("images") / image.source / f"{image_id}.png"
    (write_dir / relative).write_bytes(encode_png(image.pixels))
    path = out_dir / relative
    mask_path = ""
    if image.mask is not None:
        mask_relative = Path("masks") / f"{image_id}.png"
        (write_dir / mask_relative).write_bytes(encode_png(image.mask))
        mask_path = (out_dir / mask_relative).as_posix()
    height, width = image.pixels.shape
    return {
        "image_id": image_id,
        "path": path.as_posix(),
        "label": image.label,
        "source": image.source,
        "original_path": image.original_path,
        "patient_id": image.patient_id or "",
        "patient_fold": "",
        "sha256": pixel_sha256(image.pixels),
        "width": str(width),
        "height": str(height),
        "mask_path": mask_path,
        "box": " ".join(repr(v) for v in image.box) if image.box else "",
    }


def _write_csv(path: Path, columns: tuple[str, ...], rows: Iterable[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _report(counts: dict[str, SourceCounts], rows: list[dict], rejects: list[Rejected], wall: float) -> MergeReport:
    classes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    per_source_classes = {source: Counter() for source in counts}
    per_source_reasons = {source: Counter() for source in counts}
    for row in rows:
        per_source_classes[row["source"]][row["label"]] += 1
        counts[row["source"]].without_patient_id += not row["patient_id"]
    for reject in rejects:
        per_source_reasons[reject.source][reject_category(reject.reason)] += 1
    for source, c in counts.items():
        c.images = sum(per_source_classes[source].values())
        c.rejected = sum(per_source_reasons[source].values())
        c.classes = dict(sorted(per_source_classes[source].items()))
        c.reject_reasons = dict(sorted(per_source_reasons[source].items()))
        classes.update(per_source_classes[source])
        reasons.update(per_source_reasons[source])
        if not c.accounted():
            raise RuntimeError(f"merge lost track of members of source {source!r}: {c}")
    return MergeReport(
        sources=counts,
        classes=dict(sorted(classes.items())),
        reject_reasons=dict(sorted(reasons.items())),
        members=sum(c.members for c in counts.values()),
        images=len(rows),
        rejected=len(rejects),
        non_image=sum(sum(c.non_image.values()) for c in counts.values()),
        wall_seconds=round(wall, 3),
    )
