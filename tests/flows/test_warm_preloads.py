"""flows.serve.LAZY_IMPORTS: what a trial worker's warm server imports beyond the stage code.
Each entry must import, and must be something no stage module imports itself (else it
costs the server's start-up and saves no trial anything)."""

from __future__ import annotations

import json
import subprocess
import sys

from flows.serve import LAZY_IMPORTS, stage_packages
from tests.conftest import REPO


def _imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_every_lazy_import_is_left_to_the_warm_server_by_the_stage_code() -> None:
    stages = [f"{package}.stage" for package in stage_packages(REPO)]
    assert "tasks.train.stage" in stages and "tasks.evaluate.stage" in stages
    by_stages = _imported_after(stages)
    assert not set(LAZY_IMPORTS) & by_stages, "the stage code imports these itself"
    assert set(LAZY_IMPORTS) <= _imported_after([*stages, *LAZY_IMPORTS])
