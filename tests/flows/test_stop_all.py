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
STOPS_ON_CTRL_C = "import time; print(1, flush=True); time.sleep(60)"


def _started(code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline()  # handler installed
    return process


def test_stop_all_interrupts_every_worker_and_kills_the_stubborn_ones() -> None:
    polite, stubborn = _started(STOPS_ON_CTRL_C), [_started(IGNORES_CTRL_C) for _ in range(2)]
    stop_all([polite, *stubborn], timeout=1.0)
    assert polite.returncode == -signal.SIGINT  # stopped by Ctrl-C, not killed
    assert [process.returncode for process in stubborn] == [-signal.SIGKILL] * 2
