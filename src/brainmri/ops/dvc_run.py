"""Run the ``dvc`` command line from Python, with this interpreter's environment on ``PATH``.

DVC stages run ``python stages/<name>.py``; when the project's virtualenv is
not activated (``.venv/bin/brainmri demo``), a plain ``dvc`` would not be
found and the stages would pick up the system Python. Putting the directory
of the running interpreter first on ``PATH`` makes both resolve to the venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError


class DvcError(UserError, RuntimeError):
    """A ``dvc`` command that failed; the message names it and its last error line."""


def venv_environment() -> dict[str, str]:
    """``os.environ`` with the running interpreter's ``bin`` directory first on ``PATH``."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def run_dvc(repo: Path, *args: str, capture: bool = True) -> str:
    """Run ``dvc <args>`` in ``repo``; return its stdout, or raise ``DvcError``."""
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=venv_environment(), capture_output=capture, text=True, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-1:] if capture else []
        raise DvcError(f"dvc {' '.join(args)} failed" + (f": {detail[0]}" if detail else ""))
    return result.stdout or ""
