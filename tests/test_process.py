"""A stage's process ends fast after its work (tasks/common/process.py) without losing what
the interpreter's exit would have done: atexit handlers, buffered output, the status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_exit_now_runs_the_exit_handlers_and_flushes_buffered_output(tmp_path: Path) -> None:
    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, logging, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('done'))\n"
        f"logging.basicConfig(filename={str(tmp_path / 'log.txt')!r}, level=logging.INFO)\n"
        "logging.info('logged before exit')\n"
        "from tasks.common.process import exit_now\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_now()\n"
        "print('never reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "buffered, no newline"
    assert marker.read_text() == "done"
    assert "logged before exit" in (tmp_path / "log.txt").read_text()
