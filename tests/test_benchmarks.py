"""Every benchmark script still imports: a module moved in the library fails here, not in a user's real-data run.

The benchmarks run only on real data or for minutes, so no test runs them; their imports are the part a refactor
breaks silently (``ruff`` sees a name imported, not whether the module still defines it).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(path.stem for path in BENCHMARKS.glob("*.py")))
def test_benchmark_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # some scripts import their siblings
    module = importlib.import_module(script)
    runnable = '__name__ == "__main__"' in (BENCHMARKS / f"{script}.py").read_text()
    assert not runnable or callable(getattr(module, "main", None)), f"benchmarks/{script}.py runs no main()"
    sys.modules.pop(script, None)
