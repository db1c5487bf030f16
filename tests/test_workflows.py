"""The GitHub Actions workflows must be valid for actionlint (installed with the dev extras)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_workflows_pass_actionlint():
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert actionlint, "actionlint missing: pip install -e '.[dev]'"
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert len(workflows) >= 2
    result = subprocess.run([actionlint, *workflows], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
