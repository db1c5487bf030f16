"""Fetch stage: put every file of the active sources, checksummed, under ``fetch.out_dir``.

Each file is looked for, in order: the hand-filled ``data/`` folder (Kaggle
zips downloaded with a login, an institution's export), the configured mirror
folders, the embedded synthetic generator (demo sources), and finally its
public URL or the Kaggle API. The first hit wins; its checksum is verified
before it is used. The result is ``<out_dir>/<source>/<file>`` plus
``<out_dir>/fetch.json`` saying where each file came from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config import FetchConfig, SourceConfig, SourceFile, SyntheticConfig
from ..core.hashing import file_digest
from ..errors import UserError
from .download import DownloadError, download, verify_checksum


class FetchError(UserError, RuntimeError):
    """A source file that cannot be obtained; the message says what to do about it."""


@dataclass(frozen=True)
class FetchedFile:
    source: str
    name: str
    path: str
    origin: str
    sha256: str
    bytes: int
    role: str = "archive"  # or "patients": the source's patient table


def _kaggle_token_present() -> bool:
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (
        bool(os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
        or (config_dir / "kaggle.json").exists()
    )


def _download_from_kaggle(slug: str, target: Path, data_dir: Path) -> None:
    """Download a Kaggle dataset zip with the official CLI; needs an API token."""
    if not _kaggle_token_present():
        raise FetchError(
            f"{target.name}: Kaggle dataset {slug} needs an API token "
            "(~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY). "
            f"Without one, download it by hand from https://www.kaggle.com/datasets/{slug} "
            f"and save it as {data_dir / target.name}"
        )
    if shutil.which("kaggle") is None:
        raise FetchError(
            f"{target.name}: a Kaggle token is configured but the 'kaggle' CLI is missing: pip install kaggle"
        )
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        result = subprocess.run(
            ["kaggle", "datasets", "download", "-d", slug, "-p", scratch], capture_output=True, text=True, check=False
        )
        zips = list(Path(scratch).glob("*.zip"))
        if result.returncode != 0 or len(zips) != 1:
            raise FetchError(
                f"{target.name}: kaggle download of {slug} failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        zips[0].replace(target)


def _copy_verified(found: Path, target: Path, spec: SourceFile) -> None:
    try:
        verify_checksum(found, md5=spec.md5, sha256=spec.sha256)
    except DownloadError as error:
        raise FetchError(str(error)) from None
    shutil.copyfile(found, target)


def fetch_file(
    source_name: str, source: SourceConfig, spec: SourceFile, cfg: FetchConfig, synthetic_files: dict[str, Path]
) -> FetchedFile:
    """Obtain one source file into ``cfg.out_dir/<source>/`` from the first place that has it."""
    target = cfg.out_dir / source_name / spec.name
    target.parent.mkdir(parents=True, exist_ok=True)
    origin = None
    for folder, label in [(cfg.data_dir, "data"), *[(mirror, "mirror") for mirror in cfg.mirrors]]:
        candidate = folder / spec.name
        if candidate.is_file():
            _copy_verified(candidate, target, spec)
            origin = f"{label}:{candidate}"
            break
    if origin is None and source.synthetic is not None:
        shutil.copyfile(synthetic_files[source.synthetic], target)
        origin = f"synthetic:{source.synthetic}"
    if origin is None and spec.url:
        try:
            download(spec.url, target, md5=spec.md5, sha256=spec.sha256)
        except DownloadError as error:
            raise FetchError(f"{source_name}: {error}") from None
        origin = f"url:{spec.url}"
    if origin is None and spec.kaggle:
        _download_from_kaggle(spec.kaggle, target, cfg.data_dir)
        try:
            verify_checksum(target, md5=spec.md5, sha256=spec.sha256)
        except DownloadError as error:
            target.unlink()
            raise FetchError(str(error)) from None
        origin = f"kaggle:{spec.kaggle}"
    if origin is None:
        places = ", ".join(str(p) for p in [cfg.data_dir, *cfg.mirrors])
        by_hand = (
            f"; download it from {source.homepage} and save it as {cfg.data_dir / spec.name}" if source.homepage else ""
        )
        raise FetchError(
            f"{source_name}: {spec.name} not found in {places} and the source has no URL or Kaggle slug{by_hand}"
        )
    role = "patients" if spec is source.patients else "archive"
    return FetchedFile(
        source_name, spec.name, str(target), origin, file_digest(target, "sha256"), target.stat().st_size, role
    )


def fetch_sources(sources: dict[str, SourceConfig], cfg: FetchConfig, synthetic: SyntheticConfig) -> list[FetchedFile]:
    """Fetch every file of ``sources`` into a fresh ``cfg.out_dir`` and write ``fetch.json``."""
    if cfg.out_dir.exists():
        shutil.rmtree(cfg.out_dir)
    cfg.out_dir.mkdir(parents=True)
    synthetic_files: dict[str, Path] = {}
    if any(source.synthetic for source in sources.values()):
        from ..synthetic.archives import write_demo_archives

        synthetic_files = write_demo_archives(cfg.out_dir / "_synthetic", synthetic)
    fetched = []
    for name, source in sources.items():
        archives = [fetch_file(name, source, spec, cfg, synthetic_files) for spec in source.files]
        fetched += archives
        if source.patients is not None and source.patients.member is not None:
            # the table is inside one of the source's archives: record that archive again, in its patients role
            archive = next(record for record in archives if record.name == source.patients.name)
            fetched.append(replace(archive, role="patients"))
        elif source.patients is not None:
            fetched.append(fetch_file(name, source, source.patients, cfg, synthetic_files))
    truth = cfg.out_dir / "_synthetic" / "demo_truth.json"
    if truth.exists():
        truth.replace(cfg.out_dir / "demo_truth.json")
    shutil.rmtree(cfg.out_dir / "_synthetic", ignore_errors=True)
    (cfg.out_dir / "fetch.json").write_text(json.dumps([asdict(f) for f in fetched], indent=2) + "\n")
    return fetched


def fetched_archives(out_dir: Path) -> dict[str, list[Path]]:
    """Read ``fetch.json`` back: source name → its archive files, for the merge stage."""
    archives: dict[str, list[Path]] = {}
    for record in json.loads((out_dir / "fetch.json").read_text()):
        if record["role"] == "archive":
            archives.setdefault(record["source"], []).append(Path(record["path"]))
    return archives


def fetched_patient_tables(out_dir: Path) -> dict[str, Path]:
    """Read ``fetch.json`` back: source name → its fetched patient table, for sources that declare one."""
    records = json.loads((out_dir / "fetch.json").read_text())
    return {record["source"]: Path(record["path"]) for record in records if record["role"] == "patients"}
