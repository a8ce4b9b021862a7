"""A lab of several machines: `make lab` on the head node, `make lab-worker HEAD=...` on each
GPU host (`python -m flows.lab head|worker`).

The head node (flows/lab_servers.py) runs PostgreSQL with the Optuna storage, MLflow's
backend store and Prefect's database; an MLflow tracking server that stores artifacts
itself; a Prefect server; and `flows.serve` (the work pool, the trial deployment, the
sweep, table and pipeline deployments, with the Optuna storage on PostgreSQL as their
default). Its state lives in `.lab/` of the head's clone.

A worker host is a clone of the repository at the study's commit. `worker` pulls the
reproduced DAG from the DVC remote (`dvc pull`), points Prefect, MLflow and PostgreSQL (the
head's password file, copied to `.lab/pgpass`) at the head node, and starts one trial worker
per GPU (or `--workers N` on CPUs). Each trial runs in that clone and, once finished,
pushes its DVC experiment to the git remote `--push` names and its outputs to the DVC
remote (`dvc exp push`), so that any clone lists it (`dvc exp pull`) and can apply it.
Servers bind to 127.0.0.1 unless `head --bind` names a lab network (README, "Running on
several machines").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

from flows import lab_servers, serve
from flows.lab_servers import LabAddress
from flows.local_servers import MLFLOW_SERVER_ENV, wait_until_answering
from flows.settings import PUSH_ENV, repository

STATE = ".lab"
HEAD_WAIT_SECONDS = 180.0
# Seconds between a flow run's heartbeats (Prefect's default 180): a host that dies mid-trial
# has its trial marked Crashed after three missed ones (flows.serve.ensure_zombie_automation).
HEARTBEAT_ENV, HEARTBEAT_SECONDS = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60"


def client_environment(address: LabAddress, pgpass: Path) -> dict[str, str]:
    """What every process of the lab talks to the head node with."""
    return {
        "PREFECT_API_URL": address.prefect_api,
        "MLFLOW_TRACKING_URI": address.mlflow,
        "PGPASSFILE": str(pgpass.resolve()),
        HEARTBEAT_ENV: os.environ.get(HEARTBEAT_ENV, HEARTBEAT_SECONDS),
    }


def head(args: argparse.Namespace) -> None:
    repo = repository(args.root)
    state = Path(args.state).resolve() if args.state else repo / STATE
    everywhere = args.bind in lab_servers.ANY_ADDRESS
    advertised = args.advertise or (socket.getfqdn() if everywhere else args.bind)
    address = LabAddress(args.bind, advertised, args.postgres_port, args.mlflow_port, args.port)
    pgpass = lab_servers.password_file(state)
    os.environ.update(client_environment(address, pgpass))
    with (
        lab_servers.postgres(state, address),
        lab_servers.supervised(head_servers(address, state)) as servers,
    ):
        print(
            f"lab head: Prefect {address.prefect_api}, MLflow {address.mlflow}, Optuna "
            f"{address.database('optuna')}\nworker hosts: copy {pgpass} to their clone's "
            f"{STATE}/pgpass (mode 0600), then `make lab-worker HEAD={advertised}`",
            flush=True,
        )
        # in a process of its own: Prefect reads its settings (PREFECT_API_URL) at import
        command = [sys.executable, "-m", "flows.serve", "--workers", str(args.workers)]
        command += ["--storage", address.database("optuna"), "--root", str(repo)]
        serving = subprocess.Popen(command, env=dict(os.environ))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while serving.poll() is None:
                for server in servers:
                    server.restart_if_exited()
                time.sleep(1.0)
            raise SystemExit(f"flows.serve exited with {serving.returncode}")
        finally:
            serve.stop_all([serving])


def head_servers(address: LabAddress, state: Path) -> list[lab_servers.SupervisedServer]:
    """The MLflow and Prefect servers, restarted by the head whenever they exit."""
    logs, own = state / "logs", address.own
    mlflow = lab_servers.SupervisedServer(
        "the MLflow server",
        lab_servers.mlflow_server(state, address),
        {**os.environ, **MLFLOW_SERVER_ENV},
        f"http://{own}:{address.mlflow_port}/health",
        logs / "mlflow.log",
    )
    command, extra = lab_servers.prefect_server(address)
    prefect = lab_servers.SupervisedServer(
        "the Prefect server",
        command,
        {**os.environ, **extra},
        f"http://{own}:{address.prefect_port}/api/health",
        logs / "prefect.log",
    )
    return [mlflow, prefect]


def pull_dag(repo: Path) -> None:
    """The reproduced DAG's outputs from the DVC remote, so trials start from the study's."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "pull"],
        cwd=repo,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"dvc pull failed in {repo}: the lab's clones need the DVC remote that the head's "
            f"clone pushed to (`dvc remote add -d ...`, committed)\n{done.stdout}{done.stderr}"
        )


def worker(args: argparse.Namespace) -> None:
    repo = repository(args.root)
    pgpass = Path(args.pgpass) if args.pgpass else repo / STATE / "pgpass"
    if not pgpass.is_file():
        raise SystemExit(
            f"no PostgreSQL password file at {pgpass}: copy the head node's {STATE}/pgpass "
            "there (mode 0600) or pass --pgpass"
        )
    address = LabAddress(args.head, args.head, args.postgres_port, args.mlflow_port, args.port)
    if not args.no_pull:
        pull_dag(repo)
    os.environ.update(client_environment(address, pgpass))
    if args.push:
        os.environ[PUSH_ENV] = args.push
    wait_until_answering(f"{address.prefect_api}/health", HEAD_WAIT_SECONDS, what="the head")
    logs = repo / ".prefect" / "logs"
    gpus = [gpu for gpu in args.gpus.split(",") if gpu]
    name = args.name or socket.gethostname()
    with TemporaryDirectory() as warm:  # private (0700): a warm server runs what it is sent
        processes = serve.start_workers(args.workers, gpus, logs, repo, Path(warm), host=name)
        print(f"{len(gpus) or args.workers} worker(s) of {name} on the lab at {args.head}")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while all(process.poll() is None for process in processes):
                time.sleep(1.0)
            raise SystemExit("a worker or its warm-start server exited: see .prefect/logs/")
        finally:
            serve.stop_all(processes)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("head", "worker"):
        command = commands.add_parser(name)
        command.add_argument("--root", default=None, help="the clone (default: here)")
        command.add_argument("--port", type=int, default=4200, help="Prefect's port")
        command.add_argument("--mlflow-port", type=int, default=5000)
        command.add_argument("--postgres-port", type=int, default=5432)
    head_command = commands.choices["head"]
    head_command.add_argument(
        "--bind", default="127.0.0.1", help="the servers' address (0.0.0.0: every interface)"
    )
    head_command.add_argument("--advertise", default=None, help="the head's name for workers")
    head_command.add_argument("--state", default=None, help="the servers' data (default .lab)")
    head_command.add_argument("--workers", type=int, default=0, help="trial workers here too")
    worker_command = commands.choices["worker"]
    worker_command.add_argument("--head", default="127.0.0.1", help="the head node's address")
    worker_command.add_argument("--workers", type=int, default=1, help="CPU workers")
    worker_command.add_argument("--gpus", default="", help="one worker per GPU id: 0,1,2,3")
    worker_command.add_argument("--name", default=None, help="this host's name in Prefect")
    worker_command.add_argument("--pgpass", default=None, help="default: .lab/pgpass")
    worker_command.add_argument(
        "--push", default="origin", help="git remote for the trials' experiments ('': none)"
    )
    worker_command.add_argument("--no-pull", action="store_true", help="skip `dvc pull`")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    (head if args.command == "head" else worker)(args)


if __name__ == "__main__":
    main()
