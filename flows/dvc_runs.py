"""DVC as the flows run it: stages in DAG order (`dvc repro -s`) and experiments.

A pipeline task is `dvc repro --single-item STAGE`: DVC decides whether the stage is stale,
so a second run of the flow reproduces nothing. A sweep trial or table cell is a DVC
experiment, `dvc exp run --temp -n NAME -S key=value ...`: `--temp` runs in a copy of the
repository under .dvc/tmp/exps, so several run at once; the stages it reruns (whatever the
overrides touch) restore everything upstream from the DVC cache and run-cache. Paths handed
to it must be absolute. The finished experiment is a git ref that DVC's own commands
reproduce, compare and promote (`dvc exp show`, `dvc exp apply NAME`, `dvc exp branch
NAME`); its metrics are read back from it by name.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dvc.api
import networkx
from dvc.repo import Repo

from flows.overlays import hydra_value
from tasks.params import MetricSpec, Params, ParamsError, merge, read_yaml, resolve_key

FAILED_STAGE = re.compile(r"failed to reproduce '([^']+)'")
RAN_STAGE = re.compile(r"Running stage '([^']+)'")
LOCKED = "Unable to acquire lock"
EXIT_CODE = re.compile(r"exited with (-?\d+)")
LOG_TAIL_LINES = 40
# Seconds between attempts of an experiment that could not take the repository's lock: DVC
# itself gives up after 3 s, and on a loaded machine another trial's `dvc exp run --temp`
# (copying the workspace, collecting its result) holds it longer. About a minute in all.
LOCK_RETRY_DELAYS = (2.0, 4.0, 8.0, 16.0, 30.0)
SHELL_SIGNAL_BASE = 128


@dataclass(frozen=True)
class DvcResult:
    """How one `dvc repro` / `dvc exp run` ended, with the stages it ran and its log tail."""

    name: str
    returncode: int
    seconds: float
    ran_stages: tuple[str, ...]
    failed_stage: str | None
    log_tail: str

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0

    @property
    def transient(self) -> bool:
        """Worth retrying: the stage was killed by a signal (OOM killer, preemption; training
        resumes from its last checkpoint) or another DVC process held the lock."""
        return self.killed_by is not None or LOCKED in self.log_tail

    @property
    def locked_out(self) -> bool:
        """DVC refused to start: another DVC process held the repository's lock."""
        return LOCKED in self.log_tail and not self.ran_stages and self.failed_stage is None

    @property
    def exit_status(self) -> int:
        """The failed stage's exit status as DVC reported it (else dvc's own)."""
        code = EXIT_CODE.findall(self.log_tail)
        return int(code[-1]) if code else self.returncode

    @property
    def killed_by(self) -> signal.Signals | None:
        """The signal that ended the stage. DVC runs a stage through `$SHELL -c` (`/bin/sh`
        when SHELL is unset): bash execs the command and DVC sees -N, dash waits for it and
        exits with 128 + N, the POSIX shells' convention for a child killed by signal N."""
        status = self.exit_status
        if status < 0:
            number = -status
        elif status > SHELL_SIGNAL_BASE:
            number = status - SHELL_SIGNAL_BASE
        else:
            return None
        try:
            return signal.Signals(number)
        except ValueError:
            return None

    def failure_reason(self) -> str:
        """One line for the table: which stage failed, how (signal, exit code, timeout),
        and the last line the stage printed (its exception) before DVC's own error."""
        stage = f"stage {self.failed_stage}" if self.failed_stage else "dvc"
        killed_by = self.killed_by
        how = f"killed by {killed_by.name}" if killed_by else f"exited with {self.exit_status}"
        lines = [line.strip() for line in self.log_tail.splitlines() if line.strip()]
        dvc_error = next((i for i, line in enumerate(lines) if line.startswith("ERROR:")), None)
        before = lines[:dvc_error] if dvc_error is not None else lines
        said = before[-1] if before and not RAN_STAGE.match(before[-1]) else ""
        if said.startswith(">") or (killed_by and said == "Killed"):
            said = ""  # the stage's command line (it printed nothing), or dash's own notice
        return f"{stage} {how}" + (f": {said}" if said else "")


def lock_digest(root: Path) -> str:
    """sha256 of the repository's dvc.lock: which reproduced DAG its trials start from."""
    return hashlib.sha256((root / "dvc.lock").read_bytes()).hexdigest()


def refuse_another_dag(root: Path, study_digest: str) -> None:
    """A trial runs only in a checkout whose dvc.lock is the study's ("" : not recorded)."""
    digest = lock_digest(root)
    if study_digest and digest != study_digest:
        raise ParamsError(
            f"this checkout's dvc.lock (sha256 {digest[:12]}) is not the one the study started "
            f"from ({study_digest[:12]}): its results would not compare. Bring the checkout "
            "to the study's commit (git pull && dvc pull) or start a new study"
        )


def check_overrides(root: Path, overrides: Mapping[str, Any]) -> Params:
    """params.yaml with `overrides` applied must validate, so a bad key or value fails here,
    naming it, instead of minutes later inside a stage."""
    raw = read_yaml(root / "params.yaml")
    for key, value in overrides.items():
        resolve_key(raw, key, "override")
        raw = merge(raw, _nested(key, value))
    return Params.from_mapping(raw, source=f"params.yaml + overrides {dict(overrides)}")


def _nested(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: _nested(rest, value) if rest else value}


def stage_order(root: Path) -> list[str]:
    """The stages of dvc.yaml in dependency order, as DVC's own graph has them (ties in the
    order dvc.yaml lists them)."""
    index = Repo(str(root)).index
    position = {stage.addressing: i for i, stage in enumerate(index.stages)}
    # DVC's edges run from a stage to the stages it depends on.
    upstream_first = networkx.reverse_view(index.graph)
    ordered = networkx.lexicographical_topological_sort(
        upstream_first, key=lambda stage: position[stage.addressing]
    )
    return [stage.addressing for stage in ordered]


def stale_stages(root: Path) -> list[str]:
    """Stages whose inputs changed since dvc.lock (`dvc status`). Experiments start from the
    committed lock: a stale upstream stage would be recomputed by every trial."""
    return sorted(Repo(str(root)).status())


def exp_run_command(name: str, overrides: Mapping[str, Any]) -> list[str]:
    sets = [
        arg for key, value in overrides.items() for arg in ("-S", f"{key}={hydra_value(value)}")
    ]
    return [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name, *sets]


def repro_command(stage: str) -> list[str]:
    return [sys.executable, "-m", "dvc", "repro", "--single-item", stage]


def run_experiment(
    root: Path,
    name: str,
    overrides: Mapping[str, Any],
    environment: Mapping[str, str],
    log_path: Path,
    timeout_seconds: float | None,
) -> DvcResult:
    """Run the experiment to its end (or its timeout) with its log in `log_path`. An
    experiment that DVC refused to start because another held the lock is started again
    (after a jittered wait, so two refused trials don't collide again); it ran nothing."""
    command = exp_run_command(name, overrides)
    result = run_dvc(root, name, command, environment, log_path, timeout_seconds)
    for delay in LOCK_RETRY_DELAYS:
        if not result.locked_out:
            break
        wait = delay * random.uniform(0.5, 1.5)
        with log_path.open("a") as log:
            log.write(f"\nthe repository was locked: starting again in {wait:.1f} s\n")
        time.sleep(wait)
        result = run_dvc(root, name, command, environment, log_path, timeout_seconds, append=True)
    return result


def run_dvc(
    root: Path,
    name: str,
    command: list[str],
    environment: Mapping[str, str],
    log_path: Path,
    timeout_seconds: float | None,
    append: bool = False,
) -> DvcResult:
    """Run a DVC command with its output in `log_path` (after what it holds, with `append`).
    The stages' `python` is this interpreter: its directory goes first on PATH."""
    env = {
        **os.environ,
        **environment,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    offset = log_path.stat().st_size if append and log_path.exists() else 0
    with log_path.open("a" if append else "w") as log:
        # Its own session: a timeout kills dvc and the stage it runs, not this process.
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.write(f"\ntimed out after {timeout_seconds:.0f} s: killed\n")
            returncode = -signal.SIGKILL
    seconds = time.perf_counter() - started
    text = log_path.read_bytes()[offset:].decode(errors="replace")  # this attempt's output
    stages = FAILED_STAGE.findall(text)
    tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
    ran = tuple(dict.fromkeys(RAN_STAGE.findall(text)))
    return DvcResult(name, returncode, seconds, ran, stages[-1] if stages else None, tail)


def push_experiment(root: Path, remote: str, name: str, timeout_seconds: float = 1800) -> str:
    """`dvc exp push REMOTE NAME`: the experiment's git ref to the git remote `remote` and its
    outputs to the DVC remote, so that any clone can `dvc exp pull` and `dvc exp apply` it.
    Returns "" when pushed, else the reason (DVC's last line)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    command = [sys.executable, "-m", "dvc", "exp", "push", remote, name]
    try:
        done = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_seconds
        )
    except subprocess.TimeoutExpired:
        return f"dvc exp push timed out after {timeout_seconds:.0f} s"
    if done.returncode == 0:
        return ""
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"dvc exp push exited with {done.returncode}"


def read_metrics(root: Path, name: str, metrics: Mapping[str, MetricSpec]) -> dict[str, float]:
    """The experiment's figures, read from its git ref through DVC (`dvc metrics show`)."""
    files = sorted({spec.file for spec in metrics.values()})
    # One file per call: DVC merges the files' top-level keys, which may collide.
    shown = {path: dvc.api.metrics_show(path, repo=str(root), rev=name) for path in files}
    values = {}
    for metric, spec in metrics.items():
        try:
            values[metric] = float(resolve_key(shown[spec.file], spec.key, spec.key))
        except ParamsError:
            continue  # a metric the run did not produce (e.g. FAD-inf off) is left out
    return values


def absolute_tracking_uri(uri: str, root: Path) -> str:
    """`sqlite:///mlflow.db` is relative to the working directory, which a --temp
    experiment changes: anchor it at the repository root."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return f"{prefix}{(root / uri[len(prefix) :]).resolve()}"
    return uri
