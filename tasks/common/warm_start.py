"""Warm stage starts: a stage command run in a fork of a process that has already imported
torch, mlflow and the stage code, instead of a fresh interpreter (~3.3 s of imports per
stage on 2 cores, three stages per sweep trial).

The server (`python -m tasks.common.warm_start --socket PATH --module tasks.train
--preload tasks.train.stage ...`, one per trial worker, started by flows/serve.py) imports
the stage code, listens on a Unix socket in a private directory, and handles one command at
a time: it forks, and the child takes the client's standard streams, working directory,
environment and arguments and runs the stage's `__main__` exactly as `python -m` would.
The client is the stage command itself: the first line of each `tasks/<stage>/__main__.py`
calls `delegate_if_served`, which does nothing unless `TTM_WARM_START` names a server that
answers. Then it waits, and ends with the child's status: its exit code, or death by the
same signal (so DVC and the trial report "killed by SIGKILL" as before).

What keeps results identical to a cold start:
- the server only imports; it runs no stage code, touches no file, opens no connection, and
  a child starts with the same seeds, threads (OMP_NUM_THREADS) and environment it would have;
- the server refuses a command whose working directory holds code other than what it
  imported (a `dvc exp run --temp` copy is compared file by file): the client then starts
  cold. Code edited after the server started therefore never runs stale;
- if the client dies (killed by DVC's timeout, the OOM killer, a crashed worker), the child
  sees its socket close and kills itself: nothing outlives the command.
This module imports only the standard library, so a client that starts cold loses nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import runpy
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path

ENV = "TTM_WARM_START"  # path of the server's socket
WARM_CHILD_ENV = "TTM_WARM_CHILD"  # set in a child, so a stage can tell (tests, logs)
STALE = "stale"
READ_BESIDE_CODE = ("dvc.yaml",)
_HEADER = struct.Struct("!I")


# --------------------------------------------------------------------------- client
def delegate_if_served(module: str) -> None:
    """Run `python -m <module> <args>` in the warm server named by $TTM_WARM_START and exit
    with its status; return (start cold) when none is named, none answers, or it refuses."""
    path = os.environ.get(ENV)
    if not path:
        return
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        request = {
            "module": module,
            "argv": sys.argv[1:],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
        }
        payload = json.dumps(request).encode()
        message = _HEADER.pack(len(payload)) + payload
        sent = socket.send_fds(connection, [message], [0, 1, 2])
        connection.sendall(message[sent:])
    except OSError:
        connection.close()
        return  # no server answers: start cold
    try:
        reply = _receive(connection)
    except (OSError, ValueError):
        reply = {}  # the server or the child went away mid-command
    status = reply.get("status")
    if status == STALE:
        connection.close()
        return
    if not isinstance(status, int):  # sent, then no answer: never run the stage twice
        print(f"warm start: no status from {path}", file=sys.stderr)
        os._exit(1)
    if status < 0:  # the child died by a signal: so does this process, for DVC to see
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's handler can't be set
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


def _receive(connection: socket.socket) -> dict:
    header = _read_exactly(connection, _HEADER.size)
    return json.loads(_read_exactly(connection, _HEADER.unpack(header)[0]))


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ValueError("the warm-start peer closed the connection")
        data += chunk
    return data


def _send(connection: socket.socket, reply: dict) -> None:
    payload = json.dumps(reply).encode()
    connection.sendall(_HEADER.pack(len(payload)) + payload)


# --------------------------------------------------------------------------- server
def loaded_code(root: Path) -> dict[Path, bytes]:
    """The source of every module imported from under `root`, by path relative to it, and
    dvc.yaml (tasks/params/tracked.py reads it next to the code)."""
    code = {
        Path(name): (root / name).read_bytes()
        for name in READ_BESIDE_CODE
        if (root / name).exists()
    }
    environments = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}  # .venv/
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        # a source file of ours (torch's op namespaces carry a bare "_ops.py": not a file)
        if isinstance(origin, str) and origin.endswith(".py") and os.path.isabs(origin):
            path = Path(origin).resolve()
            inside = path.is_relative_to(root) and path.is_file()
            if inside and not any(path.is_relative_to(prefix) for prefix in environments):
                code[path.relative_to(root)] = path.read_bytes()
    return code


def same_code(code: dict[Path, bytes], cwd: Path) -> bool:
    """Whether `cwd` holds byte for byte the code the server imported."""
    for relative, source in code.items():
        try:
            if (cwd / relative).read_bytes() != source:
                return False
        except OSError:
            return False
    return True


def serve(
    path: Path, modules: list[str], preload: list[str], root: Path, parent: int | None
) -> None:
    """Import `preload`, then run `python -m M` for M in `modules`, one at a time, until the
    process `parent` (the one that started this server, if given) is gone."""
    for module in preload:
        importlib.import_module(module)
    code = loaded_code(root)
    _remove_if_dead(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.settimeout(1.0)  # to notice, between commands, that whoever started it is gone
    print(f"warm start: {len(code)} files of code loaded, listening on {path}", flush=True)
    while parent is None or os.getppid() == parent:  # one thread on purpose: forks are safe
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        with connection:
            _handle(connection, listener, code, set(modules))


def _remove_if_dead(path: Path) -> None:
    """A socket file left by a server that was killed (nobody answers on it) is removed;
    one that answers belongs to a running server, and binding fails loudly."""
    if not path.is_socket():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    finally:
        probe.close()


def _handle(
    connection: socket.socket, listener: socket.socket, code: dict[Path, bytes], modules: set[str]
) -> None:
    try:
        message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
        size = _HEADER.unpack(message[: _HEADER.size])[0]
        payload = message[_HEADER.size :]
        if len(payload) < size:
            payload += _read_exactly(connection, size - len(payload))
        request = json.loads(payload)
    except (OSError, ValueError):
        return
    try:
        if request["module"] not in modules or len(fds) != 3:
            _send(connection, {"status": STALE})  # not one of ours: the client starts cold
            return
        if not same_code(code, Path(request["cwd"])):
            _send(connection, {"status": STALE})
            return
        child = os.fork()
        if child == 0:
            listener.close()
            _run_child(connection, request, fds)  # never returns
        _, raw = os.waitpid(child, 0)
        status = os.waitstatus_to_exitcode(raw)
        _send(connection, {"status": status})
    except OSError:
        pass  # the client went away: its child has killed itself
    finally:
        for fd in fds:
            os.close(fd)


def _run_child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        threading.Thread(target=_die_with_client, args=(connection,), daemon=True).start()
        os.chdir(request["cwd"])
        environment = {key: value for key, value in request["env"].items() if key != ENV}
        os.environ.clear()
        os.environ.update(environment | {WARM_CHILD_ENV: "1"})
        sys.argv = [request["module"], *request["argv"]]
        sys.path[0] = request["cwd"]
        _match_threads(environment)
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if exit_.code is not None and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with_client(connection: socket.socket) -> None:
    """The client never writes after its request: end of file means it is gone."""
    try:
        connection.recv(1)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def _match_threads(environment: dict[str, str]) -> None:
    """OpenMP read OMP_NUM_THREADS when torch loaded in the server: apply the command's."""
    torch = sys.modules.get("torch")
    threads = environment.get("OMP_NUM_THREADS", "")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--module", action="append", required=True, help="e.g. tasks.train")
    parser.add_argument("--preload", action="append", default=[], help="e.g. tasks.train.stage")
    parser.add_argument("--parent", type=int, default=None, help="leave when this pid is gone")
    args = parser.parse_args(argv)
    serve(args.socket, args.module, args.preload, Path.cwd().resolve(), args.parent)


if __name__ == "__main__":
    main()
