"""The shared Optuna storage of a multi-machine sweep, on a real PostgreSQL server that the
test starts (Debian's postgresql; `.ci/run` installs it where absent): two worker processes
claim trials from one study at once, report intermediate values, and close them."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from flows import studies
from flows.local_servers import free_port
from tasks.params import Params
from tasks.train import pruning
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def postgres_binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if found is None:
        pytest.fail(f"{name} not found: install Debian's postgresql (`.ci/run` does)")
    return found


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: use Debian's `postgres` account there."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="ttm-pg-"))  # outside pytest's root-only tmp tree
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        as_server_user([postgres_binary("initdb"), "-D", str(data), "-U", "ttm", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    control = [postgres_binary("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w"]
    subprocess.run(
        as_server_user([*control, "-o", options, "start"]), check=True, capture_output=True
    )
    try:
        yield f"postgresql+psycopg://ttm@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_server_user([*control, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


WORKER = """
import sys
from optuna.trial import TrialState
from tasks.train import pruning
from flows import studies
url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(count):
    study, spec = studies.load_study(url, name)
    claimed = studies.claim_trial(study, spec, {"host": "worker"})
    callback = pruning.PruningCallback(pruning.trial_by_number(study, claimed.number), 0)
    for step in (4, 8):
        callback(step, 1.0 + claimed.overrides["train.timestep.beta_lambda"])
    value = -claimed.overrides["model.repa.clap.weight"]
    metrics = {"clap_score": value}
    studies.close_trial(study, claimed.number, TrialState.COMPLETE, value, metrics, None)
"""


def test_two_workers_share_one_study_on_postgresql(shipped_params) -> None:
    params = Params.from_mapping(shipped_params)
    spec = studies.study_spec(params, "sweep", "p" * 32, {}, None)
    spec = spec.model_copy(update={"pruner": spec.pruner.model_copy(update={"name": "none"})})
    with postgres_server() as url:
        studies.create_study(url, "shared", spec, "tpe", 0)  # once, before the workers start
        workers = [
            subprocess.Popen([sys.executable, "-c", WORKER, url, "shared", "3"], cwd=REPO)
            for _ in range(2)
        ]
        assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
        study = optuna.load_study(study_name="shared", storage=pruning.open_storage(url))
        trials = study.trials
        assert sorted(trial.number for trial in trials) == list(range(6))
        assert all(trial.state == TrialState.COMPLETE for trial in trials)
        assert all(list(trial.intermediate_values) == [4, 8] for trial in trials)
        assert len({trial.params["model.repa.clap.weight"] for trial in trials}) == 6
