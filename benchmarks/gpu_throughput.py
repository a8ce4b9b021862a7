"""One paper-scale configuration's speed on one device, as JSON: the throughput part of
benchmarks/gpu_check.sh (README "GPU check").

`python -m benchmarks.gpu_throughput fluxaudio_s --device cuda --json out.json` builds the
model the pretrain stage builds for `params.yaml` + the configuration's overlays (REPA heads
included where the overlay weights them) on paper 000's cache shapes (64 channels at 25 Hz,
10-s clips, FLAN-T5 tokens), and measures, in this order so that a part cut short by its time
limit keeps what came before:

1. the device's dense matmul peak in the training precision (the MFU's denominator,
   measured in the same run: best of a few n×n products, 2n³ FLOPs each);
2. the training step the trainer runs (bf16 autocast, fused AdamW, grad clip; eager):
   ms/step, samples/s, FLOP/s from `FlopCounterMode` (matmuls, convolutions, attention;
   forward + backward, the optimizer not counted), MFU, peak memory;
3. guided sampling of `--sample-prompts` clips: `sample.steps` Euler steps with
   classifier-free guidance at `sample.cfg_scale` (the doubled batch per call), latents
   only: clips/s, real-time factor, ms per function evaluation, peak memory;
4. the same training step under `torch.compile` (`train.compile`): compile seconds, then
   the figures of 2.

Attention runs under `sdpa_kernel(FLASH_ATTENTION)` (`--attention flash`): where flash
cannot serve the inputs the run records why and falls back to PyTorch's own choice. The
JSON is rewritten after every measurement; a measurement that fails records its error and
the rest still run (exit status 1). `--tiny` shrinks the model to 2 blocks of 2 heads (head
width kept) for `gpu_check.sh --dry-run`, whose figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.training_throughput import (
    PAPER_SHAPES,
    PRECISIONS,
    Bench,
    Run,
    Workload,
    autocast,
    random_batch,
    synchronize,
    training_flops,
)
from models.fluxaudio import trainable_parameters
from models.sampling import function_evaluations, guided, solve
from tasks.common.generation import velocity_of
from tasks.params import Params, merge, read_yaml
from tasks.train.loop import build_optimizer
from tasks.train.model_factory import backbone_config, build_model, objective_config

REPO = Path(__file__).resolve().parents[1]
# Each configuration is params.yaml + these overlays, as `dvc exp run` would stack them.
CONFIGS: dict[str, tuple[str, ...]] = {
    "fluxaudio_s": ("params/paper_scale.yaml", "params/fluxaudio_s_ablation.yaml"),
    "table2_450m": ("params/paper_scale.yaml", "params/table2_450m.yaml"),
}
PAPER_FRAME_RATE = 25  # ACE-Step's latents: PAPER_SHAPES.frames / 25 = 10-s clips
TINY_FRAMES = 50  # 2-s clips in the dry run
PEAK_ROUNDS, PEAK_PRODUCTS = 5, 10
# What the GPU image lacks and the GPU check must not import (KINDS.md's package list).
NOT_ON_GPU_IMAGE = ("mlflow", "dvc", "prefect", "soundfile", "librosa", "optuna")


def load_config(name: str, tiny: bool) -> Params:
    raw = read_yaml(REPO / "params.yaml")
    for overlay in CONFIGS[name]:
        raw = merge(raw, read_yaml(REPO / overlay))
    if tiny:
        model = raw["model"]
        head_dim = model["hidden_dim"] // model["num_heads"]
        small = {"depth": 2, "fused_depth": 1, "num_heads": 2, "hidden_dim": 2 * head_dim}
        projector = {"projector_dim": 64}
        raw = merge(raw, {"model": {**small, "repa": {"clap": projector, "muq": projector}}})
    return Params.from_mapping(raw, source=" + ".join(("params.yaml", *CONFIGS[name])))


def timed_steps(step: Callable[[], object], steps: int, rounds: int, device: torch.device) -> float:
    """Seconds per step, the best of `rounds` rounds of `steps` steps."""
    best = float("inf")
    for _ in range(rounds):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / steps)
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of size×size products: the best of PEAK_ROUNDS rounds of PEAK_PRODUCTS each,
    after PEAK_PRODUCTS untimed ones that bring a GPU to its working clock."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def products() -> None:
        for _ in range(PEAK_PRODUCTS):
            torch.mm(a, b)

    products()
    seconds = timed_steps(products, 1, PEAK_ROUNDS, device) / PEAK_PRODUCTS
    return 2 * size**3 / seconds


class Attention:
    """Flash SDPA for every call when asked and possible; otherwise PyTorch's choice."""

    def __init__(self, flash: bool) -> None:
        self.flash = flash
        self.note = "flash (forced)" if flash else "default"

    @contextmanager
    def context(self) -> Iterator[None]:
        if self.flash:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                yield
        else:
            yield

    def refuse(self, error: RuntimeError) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        self.flash, self.note = False, f"default (flash refused: {first_line})"


def memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def memory_peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def training(
    bench: Bench, run: Run, attention: Attention, compile_backend: str | None, rounds: int
) -> dict[str, Any]:
    """The trainer's step (tasks/train/loop.py), eager or compiled: warm-up, then timed."""
    model = bench.model.to(run.device).train()
    optimizer, scheduler = build_optimizer(model, run.params.train.optim)
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    grad_clip = run.params.train.optim.grad_clip
    batch = random_batch(bench, run.device, torch.Generator().manual_seed(run.seed))
    generator = torch.Generator(device=run.device).manual_seed(run.seed)

    def step() -> None:
        with attention.context(), autocast(run):
            loss = forward(batch, run.objective, generator).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    memory_reset(run.device)
    synchronize(run.device)
    started = time.perf_counter()
    step()  # a compile, when compiled
    synchronize(run.device)
    first = time.perf_counter() - started
    for _ in range(bench.workload.warmup - 1):
        step()
    seconds = timed_steps(step, bench.workload.steps, rounds, run.device)
    figures: dict[str, Any] = {
        "first_step_s": first,
        "ms_per_step": seconds * 1e3,
        "samples_per_s": bench.workload.batch / seconds,
        "peak_memory_gib": memory_peak_gib(run.device),
    }
    return figures


def sampling(
    bench: Bench, run: Run, attention: Attention, prompts: int, rounds: int
) -> dict[str, Any]:
    """Guided Euler sampling as the evaluate stage runs it, latents only (no codec)."""
    backbone = bench.model.backbone.to(run.device).eval()
    shapes, sample = bench.shapes, run.params.sample
    generator = torch.Generator().manual_seed(run.seed)

    def condition() -> dict[str, torch.Tensor]:
        values = {
            "text": torch.randn(prompts, shapes.text_tokens, shapes.text_dim, generator=generator),
            "clap_text": torch.randn(prompts, shapes.condition_dim, generator=generator),
        }
        if backbone.quality_embedding is not None:
            values["quality_level"] = torch.full((prompts,), run.params.quality.inference_level)
        return {key: value.to(run.device) for key, value in values.items()}

    velocity = guided(velocity_of(backbone), condition(), condition(), sample.cfg_scale)
    noise = torch.randn(prompts, shapes.frames, shapes.latent_dim, generator=generator)
    noise = noise.to(run.device)
    timed = min(bench.workload.sample_steps or sample.steps, sample.steps)
    memory_reset(run.device)
    with torch.inference_mode(), attention.context(), autocast(run):
        solve(velocity, noise, 1, sample.solver)  # warm-up
        seconds = timed_steps(
            lambda: solve(velocity, noise, timed, sample.solver), 1, rounds, run.device
        )
    # Every solver step is the same network call on the same shapes: k timed steps scale
    # exactly to the full schedule.
    per_evaluation = seconds / function_evaluations(sample.solver, timed)
    total = per_evaluation * function_evaluations(sample.solver, sample.steps)
    clip_seconds = shapes.frames / PAPER_FRAME_RATE
    return {
        "prompts": prompts,
        "clip_seconds": clip_seconds,
        "steps": sample.steps,
        "solver": sample.solver,
        "cfg_scale": sample.cfg_scale,
        "steps_timed": timed,
        "seconds_per_batch": total,
        "clips_per_s": prompts / total,
        "real_time_factor": prompts * clip_seconds / total,
        "ms_per_function_evaluation": per_evaluation * 1e3,
        "peak_memory_gib": memory_peak_gib(run.device),
    }


def environment(device: torch.device) -> dict[str, Any]:
    described: dict[str, Any] = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        described |= {
            "name": properties.name,
            "cuda": torch.version.cuda,
            "capability": f"{properties.major}.{properties.minor}",
            "multiprocessors": properties.multi_processor_count,
            "memory_gib": properties.total_memory / 2**30,
        }
    return described


def measure(args: argparse.Namespace, write: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    device = torch.device(args.device)
    params = load_config(args.config, args.tiny)
    shapes = PAPER_SHAPES._replace(frames=TINY_FRAMES) if args.tiny else PAPER_SHAPES
    workload = Workload(args.batch, args.steps, args.warmup, args.sample_steps)
    config = backbone_config(params.model, params.quality, shapes)
    torch.manual_seed(params.seed)
    model = build_model(config, params.model, shapes)
    bench = Bench(args.config, model, shapes, workload)
    run = Run(
        device,
        PRECISIONS[args.precision],
        objective_config(params.model, params.train.timestep),
        params,
        params.seed,
    )
    attention = Attention(args.attention == "flash")
    result: dict[str, Any] = {
        "config": args.config,
        "overlays": list(CONFIGS[args.config]),
        "dry_run": args.tiny,
        "environment": environment(device),
        "precision": args.precision,
        "compile_backend": args.compile,
        "model": {
            "parameters_m": trainable_parameters(model) / 1e6,
            "backbone_parameters_m": trainable_parameters(model.backbone) / 1e6,
            "hidden_dim": config.hidden_dim,
            "num_heads": config.num_heads,
            "depth": config.depth,
            "fused_depth": config.fused_depth,
            "frames": shapes.frames,
            "text_tokens": shapes.text_tokens,
        },
        "workload": asdict(workload),
        "errors": {},
    }

    def part(name: str, function: Callable[[], Any]) -> None:
        started = time.perf_counter()
        try:
            try:
                result[name] = function()
            except RuntimeError as error:
                if not attention.flash or "kernel" not in str(error).lower():
                    raise
                attention.refuse(error)  # flash can't serve these inputs: PyTorch's choice
                result[name] = function()
        except Exception as error:
            result["errors"][name] = "".join(traceback.format_exception_only(error)).strip()
            traceback.print_exc()
        result["attention"] = attention.note
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
        write(result)

    part("matmul_peak_tflops", lambda: matmul_peak(device, run.dtype, args.peak_size) / 1e12)

    def flops() -> float:
        with attention.context():
            return training_flops(bench, run) / 1e9

    part("gflop_per_step", flops)

    def with_mfu(figures: dict[str, Any]) -> dict[str, Any]:
        gflop, peak = result.get("gflop_per_step"), result.get("matmul_peak_tflops")
        if gflop and peak:
            achieved = gflop * 1e9 / (figures["ms_per_step"] / 1e3)
            figures |= {"tflops": achieved / 1e12, "mfu": achieved / (peak * 1e12)}
        return figures

    def train(compile_backend: str | None) -> dict[str, Any]:
        return with_mfu(training(bench, run, attention, compile_backend, args.rounds))

    part("training_eager", lambda: train(None))
    part("sampling", lambda: sampling(bench, run, attention, args.sample_prompts, args.rounds))
    if args.compile != "none":
        part("training_compiled", lambda: train(args.compile))
    imported = sorted(name for name in NOT_ON_GPU_IMAGE if name in sys.modules)
    if imported:
        result["errors"]["imports"] = f"imports {imported}, which the GPU image lacks"
    write(result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=sorted(CONFIGS))
    parser.add_argument("--json", type=Path, required=True, help="results, rewritten as they come")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="bf16")
    parser.add_argument("--attention", choices=("flash", "default"), default="flash")
    parser.add_argument(
        "--compile",
        choices=("inductor", "eager", "none"),
        default="inductor",
        help="torch.compile backend; eager: Dynamo's tracing alone (the CPU dry run)",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1)")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds; the best counts")
    parser.add_argument("--sample-prompts", type=int, default=32, help="clips per sampling call")
    parser.add_argument(
        "--sample-steps", type=int, default=None, help="solver steps timed (default: all)"
    )
    parser.add_argument("--peak-size", type=int, default=8192, help="n of the n×n matmuls")
    parser.add_argument("--tiny", action="store_true", help="toy sizes for the CPU dry run")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def write(result: dict[str, Any]) -> None:
        partial = args.json.with_suffix(".tmp")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(args.json)  # whole files only, even when the time limit strikes

    result = measure(args, write)
    print(json.dumps(result, indent=2))
    if result["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
