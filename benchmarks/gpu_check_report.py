"""The last step of benchmarks/gpu_check.sh: its parts' records into `results.json` and
`summary.txt` in the results folder. Standard library only, so that it reports even when
the parts could not import the project.

Reads, from the script's scratch folder: `parts.tsv` (one line per part: name, exit
status, seconds, time limit), `gpu_tests.xml` (pytest's JUnit XML), `<config>.json`
(benchmarks/gpu_throughput.py) and `nvidia-smi.txt`. Exits 1 when a part failed.
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

MFU_GOAL = 0.40  # bf16 MFU at FluxAudio-S on an H200 (the goal)
GOAL_CONFIG = "fluxaudio_s"
DRY_RUN_NOTE = (
    "DRY RUN on the CPU at toy sizes (2 blocks, 2-s clips, a few steps): it checks the "
    "script, its imports and its options end to end; no figure here says anything about a GPU"
)
TIMED_OUT = (124, 137)  # timeout(1): TERM, then KILL


def read_parts(scratch: Path) -> dict[str, dict[str, Any]]:
    parts = {}
    table = scratch / "parts.tsv"
    for line in table.read_text().splitlines() if table.exists() else []:
        name, status, seconds, limit, note = line.split("\t")
        code = int(status)
        outcome = "ok" if code == 0 else "timed out" if code in TIMED_OUT else "failed"
        if note.startswith("skipped"):
            outcome = "skipped"
        parts[name] = {
            "outcome": outcome,
            "exit_status": code,
            "seconds": int(seconds),
            "limit_s": int(limit),
            "note": note,
        }
    return parts


def read_junit(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    cases: dict[str, str] = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        children = {child.tag for child in case}
        outcome = next(
            (tag for tag in ("failure", "error", "skipped") if tag in children), "passed"
        )
        cases[case.get("name", "?")] = outcome
    counts = {
        outcome: sum(value == outcome for value in cases.values())
        for outcome in ("passed", "failure", "error", "skipped")
    }
    return {"counts": counts, "cases": cases}


def goal(throughput: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    candidates = {  # every batch size measured for the goal's configuration
        f"{variant} (batch {measured['workload']['batch']})": measured[variant]["mfu"]
        for measured in throughput.values()
        if measured.get("config") == GOAL_CONFIG
        for variant in ("training_eager", "training_compiled")
        if "mfu" in measured.get(variant, {})
    }
    best = max(candidates, key=candidates.__getitem__) if candidates else None
    return {
        "config": GOAL_CONFIG,
        "mfu_goal": MFU_GOAL,
        "best_variant": best,
        "best_mfu": candidates[best] if best else None,
        "met": None if dry_run or best is None else candidates[best] >= MFU_GOAL,
    }


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = [f"GPU check (benchmarks/gpu_check.sh), mode {results['mode']}, {results['date']}"]
    if results["mode"] == "dry-run":
        lines.append(DRY_RUN_NOTE)
    lines.append(results["host"].get("nvidia_smi") or "nvidia-smi: none")
    lines.append("")
    lines.append("parts:")
    for name, part in results["parts"].items():
        note = f"  [{part['note']}]" if part["note"] else ""
        lines.append(
            f"  {name}: {part['outcome']} (exit {part['exit_status']}) in {part['seconds']} s "
            f"(limit {part['limit_s']} s){note}"
        )
    tests = results["gpu_tests"]
    if tests is not None:
        counts = ", ".join(f"{count} {outcome}" for outcome, count in tests["counts"].items())
        lines.append(f"  gpu tests: {counts}")
        lines.extend(f"    {name}: {outcome}" for name, outcome in tests["cases"].items())
    for config, measured in results["throughput"].items():
        model, workload = measured["model"], measured["workload"]
        environment = measured["environment"]
        lines += [
            "",
            f"{config}: {model['parameters_m']:.1f} M trainable parameters, hidden "
            f"{model['hidden_dim']}, depth {model['depth']} ({model['fused_depth']} fused), "
            f"{model['frames']} frames + {model['text_tokens']} text tokens; "
            f"{environment.get('name', environment['device'])}, {measured['precision']}, "
            f"attention {measured.get('attention', '?')}, torch {environment['torch']}",
            f"  matmul peak {_number(measured.get('matmul_peak_tflops'), '.1f')} TFLOP/s, "
            f"{_number(measured.get('gflop_per_step'), '.1f')} GFLOP per training step "
            f"(batch {workload['batch']})",
        ]
        for variant in ("training_eager", "training_compiled"):
            if variant not in measured:
                continue
            figures = measured[variant]
            mfu = figures.get("mfu")
            lines.append(
                f"  {variant:<18} {figures['ms_per_step']:8.1f} ms/step "
                f"{figures['samples_per_s']:8.1f} samples/s "
                f"{_number(figures.get('tflops'), '6.1f')} TFLOP/s "
                f"MFU {_number(None if mfu is None else 100 * mfu, '5.1f')} %  "
                f"peak {_number(figures['peak_memory_gib'], '.1f')} GiB  "
                f"first step {figures['first_step_s']:.1f} s"
            )
        if "sampling" in measured:
            sample = measured["sampling"]
            lines.append(
                f"  sampling {sample['prompts']} clips of {sample['clip_seconds']:g} s, "
                f"{sample['steps']} {sample['solver']} steps, CFG {sample['cfg_scale']:g}: "
                f"{sample['clips_per_s']:.2f} clips/s, real-time factor "
                f"{sample['real_time_factor']:.1f}x, "
                f"{sample['ms_per_function_evaluation']:.1f} ms per function evaluation, "
                f"peak {_number(sample['peak_memory_gib'], '.1f')} GiB"
                + ("" if sample["steps_timed"] == sample["steps"] else " (extrapolated)")
            )
        lines.extend(f"  error in {part}: {error}" for part, error in measured["errors"].items())
    target = results["goal"]
    verdict = {True: "met", False: "not met", None: "not judged"}[target["met"]]
    best = target["best_mfu"]
    lines += [
        "",
        f"goal: >= {target['mfu_goal']:.0%} bf16 MFU at {target['config']}: {verdict} "
        f"(best {_number(None if best is None else 100 * best, '.1f')} %, "
        f"{target['best_variant']})",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("run", "dry-run"), required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    smi = args.scratch / "nvidia-smi.txt"
    throughput = {
        path.stem: json.loads(path.read_text()) for path in sorted(args.scratch.glob("*.json"))
    }
    dry_run = args.mode == "dry-run"
    results = {
        "mode": args.mode,
        "note": DRY_RUN_NOTE if dry_run else "",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": {"nvidia_smi": smi.read_text().strip() if smi.exists() else None},
        "parts": read_parts(args.scratch),
        "gpu_tests": read_junit(args.scratch / "gpu_tests.xml"),
        "throughput": throughput,
        "goal": goal(throughput, dry_run),
    }
    (args.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = "\n".join(summary_lines(results)) + "\n"
    (args.results / "summary.txt").write_text(summary)
    print(summary, end="")
    failed = [name for name, part in results["parts"].items() if part["outcome"] != "ok"]
    failed = [name for name in failed if results["parts"][name]["outcome"] != "skipped"]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
