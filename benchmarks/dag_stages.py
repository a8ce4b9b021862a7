"""Per-stage wall time of the DAG against its budget: `python -m benchmarks.dag_stages`.

Runs each stage of `dvc.yaml` in DAG order as `dvc repro --force --single-item <stage>`
(so every stage really runs, interpreter start-up and DVC's hashing of its outputs
included) in the current repository, and prints its seconds next to the budget the README's
"Time budget" table states. The budgets are for the embedded default on 2 CPU cores; with
other jobs on the cores the figures grow, so the run also prints the load average.
`--stages a b` times a subset (each still forced); the outputs are rewritten in place with
the same bytes (the stages are deterministic; tests/test_reproducible.py checks the metrics).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

# Seconds per stage on 2 CPU cores (README "Time budget"); the total is the DAG's target.
BUDGET_SECONDS = {
    "corpus": 40,
    "scorers": 90,
    "curate": 30,
    "captions": 15,
    "latents": 30,
    "pretrain": 200,
    "finetune": 80,
    "evaluate": 100,
}
TOTAL_BUDGET_SECONDS = 600


def dag_stages(root: Path) -> list[str]:
    """The stages in dvc.yaml's order, which lists every stage after the ones it reads."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def time_stage(stage: str, root: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["dvc", "repro", "--force", "--single-item", stage],
        cwd=root,
        check=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="*", default=None, help="default: the whole DAG")
    args = parser.parse_args()
    root = Path.cwd()
    stages = args.stages or dag_stages(root)
    unknown = set(stages) - set(BUDGET_SECONDS)
    if unknown:
        raise SystemExit(f"no budget for {sorted(unknown)}: add it to BUDGET_SECONDS")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'stage':<10} {'seconds':>8} {'budget':>7} {'ratio':>6}")
    total = 0.0
    for stage in stages:
        seconds = time_stage(stage, root)
        total += seconds
        budget = BUDGET_SECONDS[stage]
        print(f"{stage:<10} {seconds:>8.1f} {budget:>7d} {seconds / budget:>6.2f}", flush=True)
    budget = sum(BUDGET_SECONDS[s] for s in stages)
    print(f"{'total':<10} {total:>8.1f} {budget:>7d} {total / budget:>6.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
