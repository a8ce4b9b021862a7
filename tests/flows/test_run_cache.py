"""What a table's data-centric cells rely on: two trials (`dvc exp run --temp`) with the same
upstream override share the upstream stage's output through DVC's run-cache (.dvc/cache/runs)
when one finishes before the other starts, and both compute it when they run at once (why
flows/studies.py upstream_first queues the first cell of each upstream group first). A stage
with a `persist: true` output is never run-cached: every trial that changes its inputs
computes it again, which is why no upstream stage of dvc.yaml has one (checked below)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.studies import UPSTREAM_STAGES

# Each stage appends its name to runs.log (outside the repository: an experiment's temporary
# copy would keep its own) and writes its output; `up` sleeps, so two trials overlap.
WRITE = "import os, sys, time; {body}; open(sys.argv[1], 'a').write('{name}\\n')"
UP = WRITE.format(
    name="up",
    body="time.sleep(2); os.makedirs('out', exist_ok=True); "
    "open('out/up.txt', 'w').write(open('params.yaml').read())",
)
DOWN = WRITE.format(
    name="down", body="open('down.txt', 'w').write(open('out/up.txt').read() + 'x')"
)


def _run(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _scratch(tmp_path: Path, persist: bool) -> tuple[Path, Path]:
    root, log = tmp_path / "repo", tmp_path / "runs.log"
    root.mkdir()
    python = sys.executable
    stages = {
        "up": {
            "cmd": f'{python} -c "{UP}" {log}',
            "params": ["up"],
            "outs": [{"out/up.txt": {"persist": persist}}],
        },
        "down": {
            "cmd": f'{python} -c "{DOWN}" {log}',
            "deps": ["out/up.txt"],
            "params": ["down"],
            "outs": ["down.txt"],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "params.yaml").write_text(yaml.safe_dump({"up": {"x": 1}, "down": {"y": 1}}))
    _run(root, "git", "init", "-q")
    _run(root, "dvc", "init", "-q")
    _run(root, "dvc", "repro", "-q")
    _run(root, "git", "add", "-A")
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")
    _run(root, *git)
    log.write_text("")
    return root, log


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Path, Path]:
    return _scratch(tmp_path, persist=False)


def _trial(up: int, down: int) -> tuple[str, ...]:
    return ("dvc", "exp", "run", "--temp", "-q", "-S", f"up.x={up}", "-S", f"down.y={down}")


@pytest.mark.slow
def test_a_second_trial_restores_the_upstream_stage_a_first_one_ran(scratch) -> None:
    root, log = scratch
    _run(root, *_trial(2, 1))
    assert log.read_text().split() == ["up", "down"]
    _run(root, *_trial(2, 2))  # same upstream params, other downstream ones
    assert log.read_text().split() == ["up", "down", "down"]  # `up` restored, not run


@pytest.mark.slow
def test_two_trials_at_once_both_compute_the_upstream_stage(scratch) -> None:
    root, log = scratch
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    trials = [
        subprocess.Popen(_trial(3, y), cwd=root, env=env, stderr=subprocess.PIPE, text=True)
        for y in (1, 2)
    ]
    errors = [trial.communicate()[1] for trial in trials]
    if any(trial.returncode for trial in trials):
        pytest.skip(f"one trial was refused the repository lock: {errors}")
    assert sorted(log.read_text().split()) == ["down", "down", "up", "up"]


@pytest.mark.slow
def test_a_persisted_output_is_computed_again_by_every_trial(tmp_path: Path) -> None:
    root, log = _scratch(tmp_path, persist=True)
    _run(root, *_trial(4, 1))
    _run(root, *_trial(4, 2))
    assert log.read_text().split() == ["up", "down", "up", "down"]


def test_no_upstream_stage_of_the_dag_has_a_persisted_output() -> None:
    """The stages a data-centric trial reruns must stay run-cacheable, so that a second trial
    with the same upstream params restores them (latents resumes from a folder of its own)."""
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    persisted = [
        (name, out)
        for name in UPSTREAM_STAGES
        for out in stages[name].get("outs", [])
        if isinstance(out, dict) and any(spec.get("persist") for spec in out.values())
    ]
    assert not persisted
