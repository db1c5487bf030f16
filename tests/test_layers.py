"""Imports point one way: a module of the package imports only from its own part or from parts below it.

The layers, bottom up (README, "Architecture"): ``errors``; ``config``; ``core/``; ``synthetic/``; ``dataset/``
and ``model/``; ``training/``, ``evaluation/`` and ``serving/``; then ``pipeline``, ``ops/`` and ``cli``, which
wire the rest together and may import anything. Two parts of one layer do not import each other, so that, e.g.,
the evaluate stage never runs serving code, and a helper both need lives below both. Function-level imports
count as much as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "brainmri"
LAYER = {
    "errors": 0,
    "config": 1,
    "core": 2,
    "synthetic": 3,
    "dataset": 4,
    "model": 4,
    "training": 5,
    "evaluation": 5,
    "serving": 5,
}
TOP = 6
"""``pipeline``, ``ops``, ``cli``, ``__main__`` and the package ``__init__``: the wiring, free to import any part."""


def part_of(module: tuple[str, ...]) -> str:
    """The top-level part (subpackage or module) a dotted module path below ``brainmri`` belongs to."""
    return module[0] if module else "__init__"


def imported_parts(relative: Path, text: str) -> set[str]:
    """Every part of the package that ``text``, the file at ``relative`` below src/brainmri, imports."""
    here = relative.parts[:-1]  # the package the file is in (for __init__.py: the package itself)
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = (*base, *(node.module.split(".") if node.module else ()))
                if not target and node.module is None:  # `from .. import x`: x is the part
                    found.update(alias.name for alias in node.names)
                    continue
            elif node.module and node.module.split(".")[0] == "brainmri":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            found.add(part_of(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "brainmri":
                    found.add(part_of(tuple(names[1:])))
    return found


def test_every_part_has_a_layer():
    parts = {path.stem for path in PACKAGE.glob("*.py")} | {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    wiring = {"pipeline", "ops", "cli", "__main__", "__init__"}
    assert parts - wiring == set(LAYER), "a new part of the package needs its place in LAYER (or in the wiring)"


def test_imports_point_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = part_of(relative.with_suffix("").parts)
        level = LAYER.get(own, TOP)
        for other in sorted(imported_parts(relative, path.read_text()) - {own}):
            if level != TOP and LAYER.get(other, TOP) >= level:
                wrong.append(f"{path.relative_to(PACKAGE)} ({own}) imports {other}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_check_sees_relative_absolute_and_function_level_imports():
    text = "from ..core import imaging\nfrom . import ood\ndef f():\n    from ..serving.predict import x\n"
    assert imported_parts(Path("model/checkpoint.py"), text) == {"core", "model", "serving"}
    assert imported_parts(Path("model/__init__.py"), "from .. import errors\nimport brainmri.training.train\n") == {
        "errors",
        "training",
    }
    assert imported_parts(Path("cli.py"), "from .serving.predict import x\nimport numpy\n") == {"serving"}
