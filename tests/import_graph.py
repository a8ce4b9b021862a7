"""The project's import graph, read from the source (an AST walk, nothing imported).

Used by tests/test_layout.py to check the import rules and the DVC deps of each stage;
`python -m tests.import_graph` prints, for every stage of dvc.yaml, the code `deps` that its
command's import closure implies (what to paste into dvc.yaml after moving code).

Every import counts, wherever it stands (module level, inside a function, under
TYPE_CHECKING): a conservative closure never misses code a stage may run. An `__init__.py`
that holds nothing but a docstring runs nothing and is no dependency.
"""

from __future__ import annotations

import ast
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("models", "tasks", "flows")


@dataclass(frozen=True)
class Import:
    """One imported project module, where it is imported from."""

    importer: str  # dotted module name of the importing file
    module: str  # dotted module name imported (a module or a package)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(module: str) -> Path | None:
    """The file that runs when `module` is imported: a module file or a package __init__."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_files() -> list[Path]:
    return sorted(
        path
        for package in PROJECT_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def runs_code(path: Path) -> bool:
    """False for a file whose only statement is a docstring (an empty package marker)."""
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    anchor = importer.split(".")
    if not is_package:
        anchor = anchor[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def imports_of(path: Path) -> tuple[Import, ...]:
    """The project modules `path` names in its imports (without their parent packages)."""
    importer = module_name(path)
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, importer, path.name == "__init__.py")
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            targets = [name for name in submodules if module_file(name) is not None]
            if len(targets) < len(submodules):  # some names are attributes of `base` itself
                targets.append(base)
        found += [
            Import(importer, target, node.lineno)
            for target in targets
            if target.split(".")[0] in PROJECT_PACKAGES
        ]
    return tuple(found)


def closure(entry_modules: Iterable[str]) -> set[Path]:
    """Every project file that running `entry_modules` may execute."""
    seen: set[Path] = set()
    pending = [module_file(name) for name in entry_modules]
    while pending:
        path = pending.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        pending += [  # importing a.b.c runs a and a.b first
            module_file(name) for found in imports_of(path) for name in _with_parents(found.module)
        ]
    return {path for path in seen if runs_code(path)}


# --------------------------------------------------------------------------- dvc.yaml
def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def command_modules(cmd: str) -> list[str]:
    """`python -m tasks.train pretrain` -> tasks.train and its __main__ (what -m runs)."""
    words = shlex.split(cmd)
    if "-m" not in words:
        raise ValueError(f"stage command {cmd!r} is not `python -m <module>`")
    module = words[words.index("-m") + 1]
    main = f"{module}.__main__"
    return _with_parents(module) + ([main] if module_file(main) else [])


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PROJECT_PACKAGES


def expand(dep: str) -> set[Path]:
    """The code files a `deps` entry covers: a file, or every .py file under a folder."""
    path = REPO / dep
    if path.is_dir():
        files = {p for p in path.rglob("*.py") if "__pycache__" not in p.parts}
    else:
        files = {path} if path.is_file() else set()
    return {p for p in files if runs_code(p)}


def code_deps(stage: dict) -> list[str]:
    return [dep for dep in stage.get("deps", []) if isinstance(dep, str) and is_code(dep)]


def minimal_deps(files: set[Path]) -> list[str]:
    """The shortest listing of `files`: a folder where all of its code is needed, else files."""
    listed: list[str] = []

    def visit(folder: Path) -> None:
        below = {p for p in files if folder in p.parents}
        if not below:
            return
        if below == expand(str(folder.relative_to(REPO))):
            listed.append(folder.relative_to(REPO).as_posix())
            return
        for path in sorted(folder.iterdir()):
            if path.is_dir() and path.name != "__pycache__":
                visit(path)
            elif path in files:
                listed.append(path.relative_to(REPO).as_posix())

    for package in PROJECT_PACKAGES:
        visit(REPO / package)
    return listed


def stage_closure(stage: dict) -> set[Path]:
    return closure(command_modules(stage["cmd"]))


def main() -> None:
    for name, stage in dvc_stages().items():
        print(f"{name}:")
        for dep in minimal_deps(stage_closure(stage)):
            print(f"  - {dep}")


if __name__ == "__main__":
    sys.exit(main())
