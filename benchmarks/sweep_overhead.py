"""Orchestration overhead of a sweep: `python -m benchmarks.sweep_overhead [--trials 3]`.

Starts what a user starts (a Prefect server, `flows.serve` with `--workers` workers) in a
scratch repository whose tiny DAG is reproduced and committed (or in `--repo`, an existing
reproduced repository, e.g. this one at the embedded profile with `--pretrain-steps`), runs
`prefect deployment run ablation-sweep/local` with `--trials` trials, and prints per trial
the wall time of its flow run, the seconds inside its stages (their MLflow runs), the
trainers' own seconds, and the rest: Prefect scheduling, `dvc exp run --temp` (copying the
workspace, checking out the cache, committing the experiment), interpreter start-up of each
stage, MLflow and Optuna bookkeeping. Figures are ratios to the trial's wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import optuna

from tests import prefect_stack, scratch_repo

SPLIT = (
    ("opening_seconds", "open"),
    ("experiment_outside_stages_seconds", "dvc+start-ups"),
    ("closing_seconds", "close"),
)


def pickup_gaps(stack: prefect_stack.Stack, study_name: str) -> list[float]:
    """Seconds from one trial flow run's end to the next one's start: the worker's polling,
    the flow run's process start-up and Prefect's engine (one worker: trials in sequence)."""
    code = (
        "import json\nfrom prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName\n"
        "with get_client(sync_client=True) as c:\n"
        f" runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName("
        f"like_='{study_name}-trial-')))\n"
        " print(json.dumps([[r.start_time.timestamp(), r.end_time.timestamp()]"
        " for r in runs if r.start_time and r.end_time]))"
    )
    spans = sorted(json.loads(stack.python(code)))
    return [start - end for (_, end), (start, _) in itertools.pairwise(spans)]


def report(root: Path, study_name: str, wall: float, gaps: list[float]) -> None:
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{root / 'optuna.db'}")
    print(
        f"{'trial':>5} {'state':>9} {'wall s':>8} {'stages s':>9} {'training s':>11} "
        f"{'overhead s':>11} {'overhead':>9} " + " ".join(f"{label:>13}" for _, label in SPLIT)
    )
    rows = []
    for trial in study.trials:
        attrs = trial.user_attrs
        if "trial_seconds" not in attrs:
            print(f"{trial.number:>5} {trial.state.name:>9}  (no timings)")
            continue
        rows.append(attrs)
        print(
            f"{trial.number:>5} {trial.state.name:>9} {attrs['trial_seconds']:>8.1f} "
            f"{attrs['stage_seconds']:>9.1f} {attrs['training_seconds']:>11.1f} "
            f"{attrs['overhead_seconds']:>11.1f} "
            f"{attrs['overhead_seconds'] / attrs['trial_seconds']:>9.1%} "
            + " ".join(f"{attrs.get(key, float('nan')):>13.1f}" for key, _ in SPLIT)
        )
    if rows:
        total = sum(row["trial_seconds"] for row in rows)
        overhead = sum(row["overhead_seconds"] for row in rows)
        training = sum(row["training_seconds"] for row in rows)
        print(
            f"mean per trial: {total / len(rows):.1f} s, of which orchestration "
            f"{overhead / len(rows):.1f} s ({overhead / total:.1%}) and training "
            f"{training / len(rows):.1f} s ({training / total:.1%})"
        )
    if gaps:
        print(
            f"between trials (one worker): {sum(gaps) / len(gaps):.1f} s from a trial's end "
            "to the next one's start (worker polling, flow-run process start-up)"
        )
    print(f"{len(study.trials)}-trial sweep: {wall:.0f} s wall, launch to report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="1: trials one after another")
    parser.add_argument("--repo", type=Path, default=None, help="a reproduced repository")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument(
        "--cold-stages", action="store_true", help="no warm-start servers (flows.serve's flag)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as scratch:
        if args.repo is None:
            root = Path(scratch)
            started = time.perf_counter()
            env = scratch_repo.reproduced(root)
            print(f"scratch repository reproduced in {time.perf_counter() - started:.0f} s")
        else:
            root = args.repo.resolve()
            env = scratch_repo.environment(root)
        started = time.perf_counter()
        serve = ["--workers", str(args.workers), *(["--cold-stages"] if args.cold_stages else [])]
        with prefect_stack.running(root, env, serve) as stack:
            print(f"Prefect server + flows.serve up in {time.perf_counter() - started:.0f} s")
            name = f"bench-{int(time.time())}"
            parameters = ["--param", f"study_name={name}", "--param", f"n_trials={args.trials}"]
            for key, value in (
                ("pretrain_steps", args.pretrain_steps),
                ("finetune_steps", args.finetune_steps),
            ):
                if value is not None:
                    parameters += ["--param", f"{key}={value}"]
            started = time.perf_counter()
            result = stack.prefect(
                "deployment",
                "run",
                "ablation-sweep/local",
                *parameters,
                "--watch",
                timeout=24 * 3600,
            )
            wall = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(result.stdout + result.stderr)
            report(root, name, wall, pickup_gaps(stack, name))


if __name__ == "__main__":
    main()
