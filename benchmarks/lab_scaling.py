"""Lab throughput: `python -m benchmarks.lab_scaling [--trials 4] [--hosts 1 2]`.

The same sweep on a lab simulated on this machine (tests/lab_stack.py: the head node's
PostgreSQL, MLflow and Prefect servers and worker hosts that are separate clones with their
own DVC caches, one core each) with 1 and then with 2 worker hosts, on the tiny scratch DAG.
Prints per lab the sweep's wall time (launch to report), seconds per trial, and the speed-up
against one host. Each host is one core here, and the head's servers share the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from tests import lab_stack, scratch_repo
from tests.prefect_stack import PRETRAIN_STEPS


def sweep_seconds(lab: lab_stack.Lab, hosts: int, trials: int) -> float:
    """Wall time of a `trials`-trial sweep on `hosts` worker hosts (started beforehand)."""
    with contextlib.ExitStack() as running:
        for index in range(hosts):
            running.enter_context(lab_stack.worker_host(lab, f"host-{index}"))
        name = f"scaling-{hosts}"
        started = time.perf_counter()
        result = lab.prefect(
            "deployment",
            "run",
            "ablation-sweep/local",
            "--param",
            f"study_name={name}",
            "--param",
            f"n_trials={trials}",
            *PRETRAIN_STEPS,
            "--watch",
            timeout=3600,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    states = [trial.state for trial in lab_stack.study(lab, name).trials]
    if states != [TrialState.COMPLETE] * trials:
        raise SystemExit(f"{name}: {states}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as scratch:
        dag = Path(scratch) / "dag"
        dag.mkdir()
        started = time.perf_counter()
        scratch_repo.reproduced(dag)
        print(f"scratch DAG reproduced in {time.perf_counter() - started:.0f} s", flush=True)
        walls = {}
        for hosts in args.hosts:
            root = Path(scratch) / f"lab-{hosts}"
            root.mkdir()
            with lab_stack.running(root, dag) as lab:
                walls[hosts] = sweep_seconds(lab, hosts, args.trials)
            print(f"{hosts} host(s): {walls[hosts]:.0f} s", flush=True)
    base = walls[args.hosts[0]]
    print(f"{'hosts':>5} {'trials':>6} {'wall s':>8} {'s/trial':>8} {'speed-up':>9}")
    for hosts, wall in walls.items():
        per_trial, speed_up = wall / args.trials, base / wall
        print(f"{hosts:>5} {args.trials:>6} {wall:>8.0f} {per_trial:>8.1f} {speed_up:>9.2f}")


if __name__ == "__main__":
    main()
