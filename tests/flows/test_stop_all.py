"""flows.serve.stop_all: every worker is stopped, none is left running for init to adopt."""

from __future__ import annotations

import signal
import subprocess
import sys

from flows.serve import stop_all

IGNORES_CTRL_C = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(60)"
)
# Python's own Ctrl-C handler, set explicitly: a child inherits an ignored SIGINT (as
# pytest-xdist's workers have it), and Python then leaves it ignored.
STOPS_ON_CTRL_C = (
    "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "print(1, flush=True); time.sleep(60)"
)


def _started(code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline()  # handler installed
    return process


def test_stop_all_stops_workers_with_ctrl_c() -> None:
    workers = [_started(STOPS_ON_CTRL_C) for _ in range(2)]
    stop_all(workers, timeout=60.0)  # they exit at once; the deadline is for a loaded machine
    assert [worker.returncode for worker in workers] == [-signal.SIGINT] * 2  # not killed


def test_stop_all_kills_the_workers_ctrl_c_does_not_stop() -> None:
    workers = [_started(IGNORES_CTRL_C) for _ in range(2)]
    stop_all(workers, timeout=0.5)
    assert [worker.returncode for worker in workers] == [-signal.SIGKILL] * 2
