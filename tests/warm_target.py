"""A command for tests/test_warm_start.py, served warm like a stage's `__main__`:
`python -m tests.warm_target ACTION [ARG]` prints where and how it ran, then exits with ARG,
kills itself with SIGKILL, or writes its pid to ARG and sleeps."""

from tasks.common.warm_start import WARM_CHILD_ENV, delegate_if_served

delegate_if_served("tests.warm_target")

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

action, *rest = sys.argv[1:]
warm = os.environ.get(WARM_CHILD_ENV, "0")
print(f"warm={warm} cwd={os.getcwd()} args={rest} token={os.environ.get('TOKEN')}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
if action == "exit":
    sys.exit(int(rest[0]))
if action == "kill-self":
    os.kill(os.getpid(), signal.SIGKILL)
if action == "sleep":
    Path(rest[0]).write_text(str(os.getpid()))
    time.sleep(120)
