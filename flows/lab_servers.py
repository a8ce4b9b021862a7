"""The head node's servers (flows/lab.py): one PostgreSQL cluster holding the Optuna storage,
MLflow's backend store and Prefect's database, an MLflow tracking server that stores the
artifacts itself, and a Prefect server on PostgreSQL.

Passwords stay out of URLs, flow parameters and process lists: every client finds the
database password in a libpq password file ($PGPASSFILE, mode 0600), which psycopg (Optuna,
MLflow) and asyncpg (Prefect) both read; worker hosts get a copy of it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from flows.local_servers import wait_until_answering
from flows.serve import stop_all

USER = "ttm"
DATABASES = ("optuna", "mlflow", "prefect")
SERVER_START_SECONDS = 180.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::")
ROOT_HINT = (
    " (as root the cluster runs as the `postgres` account, which must be able to enter every"
    " folder above it: choose one with `--state`)"
)


@dataclass(frozen=True)
class LabAddress:
    """Where the head node's servers listen (`bind`) and how other hosts reach them
    (`host`: the bind address, or the head's name when it binds every interface)."""

    bind: str = "127.0.0.1"
    host: str = "127.0.0.1"
    postgres_port: int = 5432
    mlflow_port: int = 5000
    prefect_port: int = 4200

    def database(self, name: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{USER}@{self.host}:{self.postgres_port}/{name}"

    @property
    def mlflow(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def on_loopback(self) -> bool:
        return self.bind in LOOPBACK

    @property
    def own(self) -> str:
        """How the head reaches its own servers: loopback, unless they bind one address."""
        return "127.0.0.1" if self.on_loopback or self.bind in ANY_ADDRESS else self.bind


def postgres_binary(name: str) -> str:
    """Debian's PostgreSQL tools (`apt-get install postgresql`; `make lab` installs it)."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install PostgreSQL (apt-get install postgresql)"
        )
    return found


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there it runs as Debian's `postgres` account."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def password_file(state: Path) -> Path:
    """The lab's libpq password file, created once with a random password (mode 0600)."""
    path = state / "pgpass"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(f"*:*:*:{USER}:{secrets.token_urlsafe(24)}\n")
    return path


def _password(pgpass: Path) -> str:
    return pgpass.read_text().strip().rsplit(":", 1)[1]


def _owned_by_server(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def initialise(data: Path, pgpass: Path, address: LabAddress) -> None:
    """A new cluster in `data`: local socket connections trusted, TCP ones by password
    (scram-sha-256), from any address only when the head binds a lab network."""
    data.parent.mkdir(parents=True, exist_ok=True)
    _owned_by_server(data.parent)
    with tempfile.TemporaryDirectory(prefix="ttm-initdb-") as folder:
        secret = Path(folder) / "password"
        secret.write_text(_password(pgpass) + "\n")
        _owned_by_server(Path(folder))
        _owned_by_server(secret)
        initdb = [postgres_binary("initdb"), "-D", str(data), "-U", USER, f"--pwfile={secret}"]
        initdb += ["--auth-local=trust", "--auth-host=scram-sha-256"]
        done = subprocess.run(as_server_user(initdb), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"initdb failed for {data}{ROOT_HINT if os.geteuid() == 0 else ''}:\n{done.stderr}"
        )
    if not address.on_loopback:  # initdb allows TCP from loopback only
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")


@contextlib.contextmanager
def postgres(state: Path, address: LabAddress) -> Iterator[None]:
    """The lab's PostgreSQL cluster (state/postgres), initialised on first use, running
    until the block ends, with the lab's databases and Prefect's pg_trgm extension."""
    pgpass = password_file(state)
    data = state / "postgres" / "data"
    if not (data / "PG_VERSION").exists():
        initialise(data, pgpass, address)
    sockets = Path(tempfile.mkdtemp(prefix="ttm-pg-"))  # short: a socket path is < 108 bytes
    _owned_by_server(sockets)
    options = f"-p {address.postgres_port} -k {sockets} -c listen_addresses={address.bind}"
    control = [postgres_binary("pg_ctl"), "-D", str(data), "-l", str(data.parent / "log")]
    started = subprocess.run(
        as_server_user([*control, "-w", "-o", options, "start"]), capture_output=True, text=True
    )
    if started.returncode != 0:
        raise RuntimeError(
            f"PostgreSQL did not start (see {data.parent / 'log'}):\n{started.stdout}"
        )
    try:
        create_databases(address)
        yield
    finally:
        subprocess.run(as_server_user([*control, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(sockets, ignore_errors=True)


def create_databases(address: LabAddress) -> None:
    """The lab's databases, where missing (through TCP and $PGPASSFILE, as every client)."""
    url = f"host={address.own} port={address.postgres_port} user={USER} dbname=postgres"
    with psycopg.connect(url, autocommit=True) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in existing:
                connection.execute(f'CREATE DATABASE "{name}"')
    prefect = url.replace("dbname=postgres", "dbname=prefect")
    with psycopg.connect(prefect, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # Prefect's requirement


def _local(address: LabAddress) -> LabAddress:
    """The same servers as the head node reaches them itself."""
    return LabAddress(address.own, address.own, *_ports(address))


def _ports(address: LabAddress) -> tuple[int, int, int]:
    return address.postgres_port, address.mlflow_port, address.prefect_port


@dataclass
class SupervisedServer:
    """A head-node server that the head restarts whenever it exits (a crash, the kernel's OOM
    killer, an operator's `kill`), as systemd's `Restart=always` would. Clients ride out the
    gap on their own retries: MLflow's client retries a refused connection with exponential
    backoff for about two minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES 7, factor 2), and a trial
    worker's Prefect client retries too. Started in a session of its own, so that what it
    leaves behind (the MLflow CLI's uvicorn child) is killed with it and frees the port."""

    name: str
    command: list[str]
    env: dict[str, str]
    health: str
    log: Path
    process: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as output:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_answering(
            self.health, SERVER_START_SECONDS, self.process, f"{self.name} (log: {self.log})"
        )

    def restart_if_exited(self) -> bool:
        """Start the server again if it has exited; True when it had."""
        if self.process is None or self.process.poll() is None:
            return False
        code = self.process.returncode
        _kill_session(self.process.pid)
        self.restarts += 1
        print(
            f"lab head: {self.name} exited with {code}; restarting it "
            f"(restart {self.restarts}, log: {self.log})",
            flush=True,
        )
        self.start()
        print(f"lab head: {self.name} answers again at {self.health}", flush=True)
        return True

    def stop(self) -> None:
        if self.process is not None:
            stop_all([self.process])
            _kill_session(self.process.pid)


def _kill_session(leader: int) -> None:
    """SIGKILL what is left of the session `leader` started (its process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)


@contextlib.contextmanager
def supervised(servers: list[SupervisedServer]) -> Iterator[list[SupervisedServer]]:
    """Start `servers` in order (each answering before the next starts); stop them all when
    the block ends, whatever happened inside it."""
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in reversed(servers):
            server.stop()


def mlflow_server(state: Path, address: LabAddress) -> list[str]:
    """`mlflow server` on PostgreSQL with `--serve-artifacts`: clients upload and download
    artifacts through it (mlflow-artifacts:/ URIs), never to or from the head node's disk."""
    local = _local(address)
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        local.database("mlflow"),
        "--serve-artifacts",
        "--artifacts-destination",
        str((state / "mlflow-artifacts").resolve()),
        "--host",
        address.bind,
        "--port",
        str(address.mlflow_port),
        "--workers",
        "1",
        *([] if address.on_loopback else ["--allowed-hosts", _allowed_hosts(address)]),
    ]


def _allowed_hosts(address: LabAddress) -> str:
    """MLflow checks the Host header (DNS rebinding): the head's lab name, and loopback."""
    return f"{address.host}:{address.mlflow_port},127.0.0.1:{address.mlflow_port},localhost:*"


def prefect_server(address: LabAddress) -> tuple[list[str], dict[str, str]]:
    """`prefect server start` on PostgreSQL (asyncpg), and the environment it needs."""
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", address.bind, "--port", str(address.prefect_port)]
    url = _local(address).database("prefect", driver="asyncpg")
    return command, {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url}
