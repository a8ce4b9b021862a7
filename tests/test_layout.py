"""The architecture, checked from the source (docs/architecture.md "Layout and import rules").

- `models/` is plain PyTorch: it imports nothing of the project but itself.
- `tasks/` never imports `flows/` (imports flow one way: flows -> tasks -> models).
- Shared packages under tasks/ (params, common, backends, synthesis) import no stage package.
- A stage package imports from another stage only that stage's published readers of its
  artefacts (PUBLISHED_READERS), and a reader never pulls in its own stage's other code.
- No import cycles.
- Each dvc.yaml stage's code `deps` are exactly the import closure of its command, and the
  params it declares there are the ones it logs and fingerprints (tasks/params/tracked.py).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from tasks.params import load_params
from tasks.params.tracked import tracked_keys, tracked_params
from tests.import_graph import (
    REPO,
    Import,
    code_deps,
    dvc_stages,
    expand,
    imports_of,
    minimal_deps,
    module_name,
    project_files,
    stage_closure,
)

SHARED = ("tasks.params", "tasks.common", "tasks.backends", "tasks.synthesis")
STAGE_PACKAGES = (
    "tasks.corpus",
    "tasks.scorers",
    "tasks.curate",
    "tasks.captions",
    "tasks.latents",
    "tasks.train",
    "tasks.evaluate",
)
# What another stage may import from a stage: the code that reads its output artefacts.
PUBLISHED_READERS = {
    "tasks.latents": ("tasks.latents.store", "tasks.latents.dataset"),  # the latent shards
    "tasks.train": ("tasks.train.checkpoints",),  # checkpoints/<stage>/model.safetensors
}


def package_of(module: str, packages: Iterable[str]) -> str | None:
    return next((p for p in packages if module == p or module.startswith(f"{p}.")), None)


def import_violations(edges: Iterable[Import]) -> list[str]:
    """Every import that breaks a layout rule, as 'importer:line -> module (rule)'."""
    problems = []
    for edge in edges:
        source, target = edge.importer, edge.module
        where = f"{source}:{edge.line} imports {target}"
        top = source.split(".")[0]
        if top == "models" and not target.startswith("models"):
            problems.append(f"{where} (models/ imports nothing of the project)")
        if top == "tasks" and target.split(".")[0] == "flows":
            problems.append(f"{where} (tasks/ never imports flows/)")
        target_stage = package_of(target, STAGE_PACKAGES)
        if package_of(source, SHARED) and target_stage:
            problems.append(f"{where} (shared code imports no stage)")
        source_stage = package_of(source, STAGE_PACKAGES)
        readers = PUBLISHED_READERS.get(target_stage or "", ())
        if source_stage and target_stage not in (None, source_stage) and target not in readers:
            problems.append(f"{where} (only {target_stage}'s published reader)")
    return problems


def all_edges() -> list[Import]:
    return [edge for path in project_files() for edge in imports_of(path)]


def cycles(edges: Iterable[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.module)
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def deps_mismatch(name: str, stage: dict) -> list[str]:
    listed = set().union(*(expand(dep) for dep in code_deps(stage)))
    needed = stage_closure(stage)
    rel = sorted
    problems = [f"{name}: missing {p.relative_to(REPO)}" for p in rel(needed - listed)]
    problems += [f"{name}: lists unused {p.relative_to(REPO)}" for p in rel(listed - needed)]
    if problems:
        problems.append(f"{name}: deps should be {minimal_deps(needed)}")
    return problems


# --------------------------------------------------------------------------- imports
def test_imports_follow_the_layout_rules() -> None:
    assert import_violations(all_edges()) == []


def test_the_rules_catch_a_stage_importing_another_stage() -> None:
    """`from tasks.curate import ...` in a training module, or a stage's own module."""
    edges = [
        Import("tasks.train.loop", "tasks.curate", 1),
        Import("tasks.train.loop", "tasks.curate.stage", 2),
        Import("tasks.evaluate.stage", "tasks.latents.stage", 3),
        Import("tasks.common.generation", "tasks.latents.dataset", 4),
        Import("models.fluxaudio", "tasks.params", 5),
        Import("tasks.common.tracking", "flows.mlflow_runs", 6),
    ]
    assert len(import_violations(edges)) == len(edges)
    allowed = [Import("tasks.evaluate.stage", "tasks.train.checkpoints", 1)]
    assert import_violations(allowed) == []


def test_published_readers_pull_in_no_other_code_of_their_stage() -> None:
    for stage, readers in PUBLISHED_READERS.items():
        for reader in readers:
            path = REPO / (reader.replace(".", "/") + ".py")
            inside = {
                module_name(p)
                for p in stage_closure({"cmd": f"python -m {reader}"})
                if module_name(p).startswith(f"{stage}.")
            }
            assert inside <= set(readers), f"{reader} ({path.name}) pulls in {inside}"


def test_there_are_no_import_cycles() -> None:
    assert cycles(all_edges()) == []
    assert cycles([Import("a", "b", 1), Import("b", "a", 1)]) == [["a", "b", "a"]]


def test_stage_packages_are_runnable_with_python_dash_m() -> None:
    for package in STAGE_PACKAGES:
        assert (REPO / package.replace(".", "/") / "__main__.py").is_file(), package


# --------------------------------------------------------------------------- dvc.yaml
@pytest.mark.parametrize("name", list(dvc_stages()))
def test_stage_deps_are_its_import_closure(name: str) -> None:
    assert deps_mismatch(name, dvc_stages()[name]) == []


def test_a_deleted_dependency_is_caught() -> None:
    stage = dict(dvc_stages()["pretrain"])
    stage["deps"] = [dep for dep in stage["deps"] if dep != "tasks/common/generation.py"]
    assert "pretrain: missing tasks/common/generation.py" in deps_mismatch("pretrain", stage)
    stage["deps"] = [*stage["deps"], "tasks/common/generation.py", "tasks/corpus/ingest.py"]
    assert "pretrain: lists unused tasks/corpus/ingest.py" in deps_mismatch("pretrain", stage)


def stale_entries(status: dict[str, list]) -> list[str]:
    """What `dvc status --json` says changed in code, params, command or committed outputs.
    Missing data (a clean clone has no data/ and no cache: "deleted", "not in cache") is not
    staleness: `dvc repro` rebuilds it from the committed code."""
    missing = {"deleted", "not in cache"}
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):  # "changed checksum", "always changed"
                stale.append(f"{stage}: {change}")
                continue
            for kind, entries in change.items():
                items = entries.items() if isinstance(entries, dict) else [(entries, kind)]
                stale += [
                    f"{stage}: {kind} {path} ({state})"
                    for path, state in items
                    if not (isinstance(state, str) and state in missing)
                ]
    return stale


def test_committed_dvc_lock_matches_the_code_and_params() -> None:
    """The committed DAG is the committed code's: no stage's code, params, command or
    committed report differs from its dvc.lock entry (`dvc status` compares hashes only)."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        check=True,
    )
    stale = stale_entries(json.loads(result.stdout or "{}"))
    assert stale == [], "run `dvc repro` and commit dvc.lock with the reports:\n" + "\n".join(stale)


def test_stale_entries_ignore_missing_data_only() -> None:
    """The shape `dvc status --json` prints for an edited module and an edited param."""
    status = {
        "curate": [
            {
                "changed deps": {
                    "data/corpus": "deleted",
                    "tasks/curate": "modified",
                    "params.yaml": {"curate": "modified"},
                }
            },
            {"changed outs": {"data/curated": "not in cache"}},
        ],
    }
    assert stale_entries(status) == [
        "curate: changed deps tasks/curate (modified)",
        "curate: changed deps params.yaml ({'curate': 'modified'})",
    ]


@pytest.mark.parametrize("name", list(dvc_stages()))
def test_declared_params_resolve_and_are_what_the_stage_logs(name: str) -> None:
    keys = tracked_keys(name)
    assert keys and len(set(keys)) == len(keys)
    params = load_params(REPO / "params.yaml")
    assert list(tracked_params(params, name)) == list(keys)


def test_stages_log_their_own_params_and_define_no_copy_of_the_list() -> None:
    """Each stage opens its MLflow run with `stage_run(params, <its name>)`, which logs the
    dvc.yaml list; no module keeps a second hand-written list (the old `stage_params`)."""
    names = set(dvc_stages())
    for package in STAGE_PACKAGES:
        folder = REPO / package.replace(".", "/")
        tree = [ast.parse(p.read_text()) for p in sorted(folder.rglob("*.py"))]
        nodes = [node for module in tree for node in ast.walk(module)]
        assert not any(
            isinstance(n, ast.FunctionDef) and n.name == "stage_params" for n in nodes
        ), package
        calls = [
            n
            for n in nodes
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "stage_run"
        ]
        assert calls, f"{package} opens no stage_run"
        for call in calls:
            stage = call.args[1]
            if isinstance(stage, ast.Constant):
                assert stage.value in names, f"{package}: stage_run({stage.value!r})"


# --------------------------------------------------------------------------- docs
def _tracked_text_files() -> list[Path]:
    suffixes = {".py", ".md", ".yaml", ".toml", ".cfg"}
    folders = ("models", "tasks", "flows", "tests", "benchmarks", "docs", "params")
    found = [p for folder in folders for p in (REPO / folder).rglob("*") if p.suffix in suffixes]
    extras = ("README.md", "dvc.yaml", "params.yaml", "pyproject.toml", "Makefile")
    return [p for p in found if "__pycache__" not in p.parts] + [REPO / name for name in extras]


def test_links_in_readme_and_docs_stay_in_the_repository() -> None:
    """A Markdown link is a public URL, an anchor, or a file of this repository."""
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            if not (page.parent / target.split("#")[0]).resolve().is_relative_to(REPO):
                broken.append(f"{page.name}: {target} leaves the repository")
            elif not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.name}: {target} does not exist")
    assert broken == []


def test_citations_point_into_the_repository() -> None:
    """Comments cite docs/reference.md, docs/papers.md and docs/architecture.md; nothing
    names a file outside the repository (the design notes and references it was built from)."""
    outside = re.compile(r"REFERENCE\.md|DESIGN\.md|STYLE\.md|\.\./shared|(?<![\w/])pitfall \d")
    cited = re.compile(r"docs/reference\.md\s*(#\s*)?pitfall")  # a citation, wrapped or not
    found = []
    for path in _tracked_text_files():
        if path.name == "test_layout.py":
            continue
        text = cited.sub("docs/reference.md", path.read_text())
        found += [f"{path.relative_to(REPO)}: {match.group()}" for match in outside.finditer(text)]
    assert found == []
    for name in ("architecture.md", "papers.md", "reference.md"):
        assert (REPO / "docs" / name).is_file()
