"""benchmarks/gpu_check.sh end to end on the CPU (`--dry-run`): the script, its imports and
its options work before a GPU machine's scarce minutes are spent on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_part(tmp_path: Path) -> None:
    results = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry-run", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = (results / "summary.txt").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    parts = [line.split(":")[0] for line in summary.splitlines()]
    assert parts == ["gpu_tests", "throughput_embedded"]
    assert all(": exit 0 " in line for line in summary.splitlines())
    assert "mode: dry-run" in (results / "environment.txt").read_text()
    tests = (results / "gpu_tests.txt").read_text()
    assert "skipped" in tests  # no CUDA here: collected and skipped, not missing
    throughput = (results / "throughput_embedded.txt").read_text()
    for variant in ("reference", "speed-ups"):
        assert f"    {variant}" in throughput
    assert "clips/s" in throughput and "MFU" in throughput
