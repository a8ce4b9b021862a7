"""The evaluate stage's wall time in both profiles: `python -m benchmarks.trial_evaluate`.

Runs `python -m tasks.evaluate` (interpreter start-up included, as DVC runs it) once with
`evaluate.profile: full` and once with `trial`, in a scratch folder that reads a reproduced
repository's data/, checkpoints/, artifacts/ and training curves through symlinks (read
only: the stage writes its reports and MLflow store in the scratch folder), and prints the
seconds, the ratio, the trial target (issue 18: <= 30 s on 2 cores) and each profile's
ranking metrics side by side. Figures taken with other jobs on the cores are too high: the
load average is printed before and after.

    python -m benchmarks.trial_evaluate --source /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TRIAL_TARGET_SECONDS = 30.0  # issue 18: a trial's evaluate stage on 2 CPU cores
READ_ONLY = ("data", "checkpoints", "artifacts", "reports/pretrain", "reports/finetune")
RANKING = ("clap_score", "fad_clap", "pmos")


def scratch(source: Path, folder: Path, params: dict, profile: str) -> Path:
    """A folder where the stage runs on `source`'s reproduced inputs with `profile`."""
    work = folder / profile
    (work / "reports").mkdir(parents=True)
    for name in READ_ONLY:
        if not (source / name).exists():
            raise SystemExit(f"{source / name} is missing: reproduce the repository first")
        (work / name).symlink_to((source / name).resolve())
    params = {**params, "evaluate": {**params["evaluate"], "profile": profile}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def time_stage(work: Path, code: Path) -> float:
    environment = {
        **os.environ,
        "PYTHONPATH": str(code),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tasks.evaluate"],
        cwd=work,
        env=environment,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path.cwd(), help="reproduced repository")
    parser.add_argument("--profiles", nargs="+", default=["full", "trial"])
    args = parser.parse_args()
    code = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((code / "params.yaml").read_text())
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    seconds, metrics = {}, {}
    with tempfile.TemporaryDirectory(prefix="trial_evaluate_") as folder:
        for profile in args.profiles:
            work = scratch(args.source.resolve(), Path(folder), params, profile)
            seconds[profile] = time_stage(work, code)
            metrics[profile] = json.loads((work / "reports/metrics.json").read_text())
            print(f"{profile:<6} {seconds[profile]:>7.1f} s", flush=True)
    if "trial" in seconds:
        verdict = "within" if seconds["trial"] <= TRIAL_TARGET_SECONDS else "over"
        print(f"trial target {TRIAL_TARGET_SECONDS:.0f} s: {verdict}")
    if {"full", "trial"} <= set(seconds):
        print(f"full / trial: {seconds['full'] / seconds['trial']:.2f}")
    for profile, figures in metrics.items():
        generated = figures["generated"]
        row = ", ".join(
            f"{name} {generated[name]['value']:.3f} [{generated[name]['low']:.3f}, "
            f"{generated[name]['high']:.3f}]"
            for name in RANKING
            if name in generated
        )
        print(f"{profile:<6} N = {figures['generated_clips']}: {row}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
