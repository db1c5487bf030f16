"""Resumable, checksummed HTTP downloads.

A download streams into ``<name>.part``; an interrupted run resumes it with an
HTTP ``Range`` request; the file gets its final name only after its checksum
matches, so a half-written or corrupt archive never looks finished.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..core.hashing import file_digest
from ..errors import UserError

CHUNK = 1 << 20


class DownloadError(UserError, RuntimeError):
    """A download that cannot complete; the message names the URL and the reason."""


def verify_checksum(path: Path, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise ``DownloadError`` showing both hashes if ``path`` does not match the expected checksum."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                raise DownloadError(f"{path}: {algorithm} mismatch: expected {expected}, got {actual}")


def download(
    url: str, target: Path, *, md5: str | None = None, sha256: str | None = None, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``target``, resuming a previous ``.part`` file and verifying the checksum.

    On a checksum mismatch the partial file is deleted (resuming it would only
    repeat the error) and ``DownloadError`` shows both hashes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    total = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset and response.status == 206
            mode = "ab" if resumed else "wb"
            done = offset if resumed else 0
            length = response.headers.get("Content-Length")
            total = done + int(length) if length is not None else None
            with (
                part.open(mode) as handle,
                tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=target.name, leave=False) as progress,
            ):
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    progress.update(len(chunk))
    except urllib.error.HTTPError as error:
        if not (error.code == 416 and offset):  # 416 on a resume: the .part is already complete
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{url}: download interrupted or unreachable ({reason}); rerun to resume") from None
    if total is not None and part.stat().st_size < total:
        raise DownloadError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes; rerun to resume")
    try:
        verify_checksum(part, md5=md5, sha256=sha256)
    except DownloadError:
        part.unlink()
        raise
    part.replace(target)
    return target
