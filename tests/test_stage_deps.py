"""DVC dependencies right by construction: every source file a stage imports is one of its deps in dvc.yaml.

A stage reruns only when a dep changes, so a file that a stage imports but ``dvc.yaml`` does not list can change
the stage's output without DVC noticing (and a listed file it no longer imports reruns it for nothing). The
import closure is computed statically, from what runs: ``stages/<name>.py`` (which hands ``pipeline.run_<name>``
to ``pipeline.stage_main``), then for each ``from module import name`` the module's top-level code and the body of
``name`` (a class: all of it; a function: with the module's functions it calls, function-level imports
included), for ``import module`` and submodules the whole module, and the ``__init__.py`` of every package on
the way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
WHOLE = "*"
"""An entry meaning every function of the module (``import module``)."""


def module_path(name: str) -> Path | None:
    """The file of module ``name`` under src/, or None when it is not part of the package."""
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_of(path: Path) -> str:
    """The package relative imports in ``path`` start from ("" for a stage script, which imports absolutely)."""
    if not path.is_relative_to(SRC):
        return ""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1])


def imports(nodes: list[ast.AST], path: Path) -> set[tuple[str, str]]:
    """(module, name) for every brainmri import within ``nodes``: the name imported from the module, or WHOLE
    for ``import module`` and for a submodule imported by ``from package import submodule``."""
    package = package_of(path)
    found = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {(alias.name, WHOLE) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.add((submodule, WHOLE) if module_path(submodule) else (module, alias.name))
    return {(module, name) for module, name in found if module.split(".")[0] == "brainmri" and module_path(module)}


def local_names(function: ast.AST) -> set[str]:
    """Names a function binds itself (arguments, assignments): not references to the module's functions."""
    bound = {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        bound |= {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    return bound


def reached_nodes(tree: ast.Module, names: set[str]) -> list[ast.AST]:
    """What runs when ``names`` of a module are used: its top-level code (with every function's decorators and
    signature), those definitions, and the module's definitions they refer to, transitively."""
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    nodes: list[ast.AST] = []
    for node in tree.body:
        if node in defs.values():
            nodes.extend(node.decorator_list)
            nodes.extend([node.args] if hasattr(node, "args") else node.bases)
        else:
            nodes.append(node)
    todo = list(defs) if WHOLE in names else [*names]
    todo += [n.id for top in nodes for n in ast.walk(top) if isinstance(n, ast.Name)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        nodes.append(defs[name])
        own = local_names(defs[name])
        todo.extend(n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id not in own)
    return nodes


def import_closure(stage_script: Path) -> set[Path]:
    """Every file under src/ that running ``stage_script`` imports."""
    entries: dict[str, set[str]] = {}
    todo = [*imports([ast.parse(stage_script.read_text())], stage_script)]
    while todo:
        module, name = todo.pop()
        parts = module.split(".")
        todo += [(".".join(parts[:i]), "") for i in range(1, len(parts)) if ".".join(parts[:i]) not in entries]
        known = entries.setdefault(module, set())
        if name in known or WHOLE in known:
            continue
        known.add(name)
        path = module_path(module)
        todo += imports(reached_nodes(ast.parse(path.read_text()), known), path)
    return {module_path(module) for module in entries}


def stages() -> dict[str, dict]:
    """Each stage of dvc.yaml as (cmd, deps); a foreach stage as its template."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in declared.items()}


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == ROOT / dep or (ROOT / dep) in path.parents for dep in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_file_a_stage_imports_is_a_dependency(name):
    stage = stages()[name]
    script = ROOT / stage["cmd"].split()[1]
    command = script.stem
    assert f'stage_main("{command}", run_{command}' in script.read_text(), f"{script} should run pipeline.run_{command}"
    deps = [str(dep) for dep in stage["deps"]]
    closure = import_closure(script)
    missing = sorted(str(path.relative_to(ROOT)) for path in closure if not covered(path, deps))
    assert not missing, (
        f"dvc.yaml stage {name} imports these files but does not depend on them: {missing} "
        "(`python tests/test_stage_deps.py` prints every stage's list)"
    )
    unused = [dep for dep in deps if dep.startswith("src/") and not any(covered(path, [dep]) for path in closure)]
    assert not unused, f"dvc.yaml stage {name} depends on source files it does not import: {unused}"
    assert str(script.relative_to(ROOT)) in deps


def test_the_closure_follows_the_stage_not_every_command():
    """The train stage imports the training code but not the dataset stages', predict's or the ops' modules."""
    closure = {str(p.relative_to(SRC)) for p in import_closure(ROOT / "stages" / "train.py")}
    assert {"brainmri/training/train.py", "brainmri/config.py", "brainmri/model/architectures.py"} <= closure
    assert "brainmri/training/__init__.py" in closure and "brainmri/__init__.py" in closure
    assert not {"brainmri/serving/predict.py", "brainmri/dataset/split.py", "brainmri/ops/reproducibility.py"} & closure
    assert "brainmri/cli.py" not in closure, "a stage runs its pipeline function directly, not through the CLI"


if __name__ == "__main__":  # print each stage's closure: the src/ deps dvc.yaml should list
    for stage_name, stage in stages().items():
        stage_script = ROOT / stage["cmd"].split()[1]
        print(f"{stage_name}:")
        for file in sorted(import_closure(stage_script)):
            print(f"  - {file.relative_to(ROOT)}")
