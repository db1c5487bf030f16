"""Merge throughput (images/s) on the real archives of the local mirror, per source and per worker count.

    python benchmarks/bench_merge.py --mirror ../shared/datasets --limit 500 --workers 1,2

``--limit N`` keeps the first N image members of each archive (plus their box
files), copied into a temporary folder that is deleted afterwards, so a quick
run stays quick; ``--limit 0`` merges the archives as they are. The label maps
are the ``mirror`` source set's in ``params.yaml``. Timings include starting
the worker processes, as a real merge does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from brainmri.config import load_config
from brainmri.core.imaging import IMAGE_SUFFIXES
from brainmri.dataset.merge import merge_sources
from brainmri.dataset.sources.image_folder import BOX_SUFFIX


def limited_copy(archive: Path, limit: int, target: Path) -> Path:
    """A copy of ``archive`` with its first ``limit`` images and their box files (members copied as they are)."""
    with zipfile.ZipFile(archive) as source:
        infos = [i for i in source.infolist() if not i.is_dir()]
        images = [i for i in infos if PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES | {".mat"}][:limit]
        stems = {str(PurePosixPath(i.filename).with_suffix("")) for i in images}
        boxes = [
            i
            for i in infos
            if i.filename.endswith(BOX_SUFFIX) and str(PurePosixPath(i.filename).with_suffix("")) in stems
        ]
        with zipfile.ZipFile(target / archive.name, "w") as copy:
            for info in images + boxes:
                copy.writestr(info, source.read(info))
    return target / archive.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mirror", type=Path, default=Path("../shared/datasets"), help="folder holding the real archives"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--limit", type=int, default=500, help="images per archive (0: all)")
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}", help="comma-separated worker counts to compare")
    args = parser.parse_args()

    cfg = load_config(args.params)
    sources = {name: cfg.sources[name] for name in cfg.source_sets["mirror"]}
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        archives = {
            name: [
                limited_copy(args.mirror / f.name, args.limit, inputs) if args.limit else args.mirror / f.name
                for f in source.files
            ]
            for name, source in sources.items()
        }
        runs = [(name, {name: paths}) for name, paths in archives.items()] + [("all sources", archives)]
        print("| source | workers | images | rejects | seconds | images/s |\n|---|---:|---:|---:|---:|---:|")
        for workers in (int(w) for w in args.workers.split(",")):
            for label, subset in runs:
                merge_cfg = cfg.merge.model_copy(update={"out_dir": Path(tmp) / "merged"})
                report = merge_sources(subset, sources, merge_cfg, workers=workers)
                rate = report.images / report.wall_seconds if report.wall_seconds else float("nan")
                print(
                    f"| {label} | {workers} | {report.images} | {report.rejected} | "
                    f"{report.wall_seconds:.1f} | {rate:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
