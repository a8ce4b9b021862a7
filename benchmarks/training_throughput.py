"""Training and sampling speed: `python -m benchmarks.training_throughput [--configs ...]`.

First the machine's dense matmul peak, measured in the same run (best of a few square
matmuls of 2n³ FLOPs, in the training precision), since these machines are shared and an
absolute figure from a datasheet would say little. Then, per model configuration:
trainable parameters; training samples/s and tokens/s (audio frames + text tokens per
sample) over timed AdamW steps on random inputs, after warm-up steps; the model FLOPs of
one training step (forward + backward, counted by `FlopCounterMode`: matmuls, convolutions
and attention, the usual MFU convention; the optimizer is not counted); the achieved
FLOP/s and the MFU, achieved / measured peak. Last, the sampling real-time factor: seconds
of latent audio per wall-clock second for a batch of prompts at `sample.steps` Euler steps
with classifier-free guidance (`sample.cfg_scale`), codec decode excluded, and the time per
function evaluation (one guided network call on the condition / null-condition pair).

Configurations: `embedded` is params.yaml's `model` on the embedded cache's shapes
(MiniLM text, the tiny CLAP); `fluxaudio_s` is the baseline's FluxAudio-S preset on paper
000's codec (64 channels at 25 Hz, 10 s) with FLAN-T5-large text and LAION-CLAP widths.
Every figure is printed per variant, side by side, from one run: `reference` (the plain
Conv1d on transposed views and a per-parameter AdamW loop: the trainer before its speed-ups;
in sampling also x repeated for each condition set of the guidance pair, so the audio stem
runs twice per call, as before it was shared), `speed-ups` (what the trainer and the sampler
run: channels-last convolutions, the wide ones without autograd only, fused AdamW, the shared
audio stem) and, with `--compile`, `compiled` (the speed-ups + `train.compile`, its one-off
compile time printed apart; training only). Equivalent rewrites without a switch (RoPE as a
complex product, tokens-before-heads attention layout, one-kernel adaLN modulation and gated
residuals, in-place SwiGLU without autograd) run in every variant, so the ratios understate
the gain over the code before them. Variants alternate over `ROUNDS` rounds and keep their
best round, so a load that comes and goes on a shared machine hits them alike.
tests/train/test_speedups.py checks that the variants compute the same losses, weights and
samples.

`--profile` adds one torch.profiler pass over each config's training steps (the speed-ups;
CPU activity), printing the ops sorted by self CPU time, then the share of the step in
GEMM-bound kernels (convolutions, matmuls, attention, AdamW's update: `GEMM_BOUND_OPS`) and
the speed-up that removing everything else entirely would give (1 / share): the ceiling
for fusion and layout changes, when those kernels already run near the measured matmul peak.
Runs unchanged on CUDA (`--device cuda`, bf16 autocast by default there).

On a shared CPU, other jobs on the cores make OpenMP's spinning threads wait for descheduled
peers; the run prints a note when the load is high, and `OMP_WAIT_POLICY=PASSIVE` (set in the
environment before Python starts) gives figures close to the machine's share.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from models.fluxaudio import PRESETS, FluxAudio, FluxAudioConfig, trainable_parameters
from models.layers import use_reference_kernels
from models.objective import FlowMatchingModel, ObjectiveConfig, TrainingBatch
from models.repa import ProjectionHead
from models.sampling import function_evaluations, guided, solve
from tasks.common.generation import velocity_of
from tasks.params import Params, load_params
from tasks.train.loop import build_optimizer
from tasks.train.model_factory import CacheShapes, backbone_config, build_model, objective_config

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}  # large enough to reach the plateau of each device
PEAK_REPEATS = 5
ROUNDS = 2  # alternating timing rounds per variant; the best one counts
# The embedded cache: MiniLM-L6 tokens, the tiny CLAP's text/audio embeddings and frames.
EMBEDDED_SHAPES = CacheShapes(
    frames=250,
    latent_dim=64,
    text_tokens=77,
    text_dim=384,
    condition_dim=128,
    clap_dim=128,
    teacher_dim=96,
)
# Paper 000's setting: ACE-Step's 64 channels at 25 Hz, FLAN-T5-large, LAION-CLAP, MuQ.
PAPER_SHAPES = CacheShapes(
    frames=250,
    latent_dim=64,
    text_tokens=77,
    text_dim=1024,
    condition_dim=512,
    clap_dim=512,
    teacher_dim=1024,
)
PAPER_PROJECTOR_DIM = 2048  # REPA's projector width at this scale


@dataclass(frozen=True)
class Workload:
    batch: int
    steps: int  # timed optimizer steps
    warmup: int  # untimed steps first: allocator, kernel selection, AdamW state
    sample_steps: int | None  # solver steps timed; None: all of `sample.steps`


@dataclass(frozen=True)
class Bench:
    name: str
    model: FlowMatchingModel
    shapes: CacheShapes
    workload: Workload


@dataclass(frozen=True)
class Run:
    device: torch.device
    dtype: torch.dtype
    objective: ObjectiveConfig
    params: Params
    seed: int


# --------------------------------------------------------------------------- device helpers
def synchronize(device: torch.device) -> None:
    """CUDA kernels run asynchronously: a wall-clock reading needs the queue drained."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(run: Run) -> torch.autocast:
    """bf16 autocast like `accelerate`'s mixed precision; disabled (a no-op) for fp32."""
    return torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32)


def best_seconds(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best of `repeats`: on a shared machine the minimum is the least disturbed reading."""
    timings = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return min(timings)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the best of a few n×n @ n×n matmuls (2n³ FLOPs), after one warm-up."""
    n = PEAK_SIZE[device.type]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), PEAK_REPEATS, device)


# --------------------------------------------------------------------------- models
def embedded_bench(params: Params, workload: Workload) -> Bench:
    """params.yaml's `model` on the embedded cache, built as the pretrain stage builds it."""
    config = backbone_config(params.model, params.quality, EMBEDDED_SHAPES)
    model = build_model(config, params.model, EMBEDDED_SHAPES)
    return Bench("embedded", model, EMBEDDED_SHAPES, workload)


def paper_bench(preset: str, params: Params, workload: Workload) -> Bench:
    """A preset on paper 000's codec; the REPA heads follow params' weights (λ > 0)."""
    config: FluxAudioConfig = replace(
        PRESETS[preset],
        latent_dim=PAPER_SHAPES.latent_dim,
        latent_seq_len=PAPER_SHAPES.frames,
        text_dim=PAPER_SHAPES.text_dim,
        condition_dim=PAPER_SHAPES.condition_dim,
    )
    repa = params.model.repa
    dim = config.hidden_dim
    model = FlowMatchingModel(
        FluxAudio(config),
        ProjectionHead(dim, PAPER_PROJECTOR_DIM, PAPER_SHAPES.clap_dim)
        if repa.clap.weight > 0
        else None,
        ProjectionHead(dim, PAPER_PROJECTOR_DIM, PAPER_SHAPES.teacher_dim)
        if repa.muq.weight > 0
        else None,
    )
    return Bench(preset, model, PAPER_SHAPES, workload)


def random_batch(bench: Bench, device: torch.device, generator: torch.Generator) -> TrainingBatch:
    """Inputs of the cache's shapes; the speed does not depend on their values."""
    b, s = bench.workload.batch, bench.shapes
    levels = bench.model.backbone.config.quality_levels

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(normal(*shape), dim=-1)

    return TrainingBatch(
        latent=normal(b, s.frames, s.latent_dim),
        text=normal(b, s.text_tokens, s.text_dim),
        clap_text=unit(b, s.condition_dim),
        quality_level=torch.randint(1, levels + 1, (b,), generator=generator).to(device)
        if levels
        else None,
        score=torch.rand(b, generator=generator).to(device),
        clap_target=unit(b, s.clap_dim),
        frame_target=normal(b, s.frames, s.teacher_dim),
    )


# --------------------------------------------------------------------------- training
def training_step(bench: Bench, run: Run, variant: str) -> Callable[[], None]:
    """One step as tasks/train/loop.py takes it: loss under autocast, backward, clip, AdamW,
    with the kernels of `variant` (module docstring)."""
    model = bench.model.to(run.device).train()
    reference = variant == "reference"
    optimizer, scheduler = build_optimizer(model, run.params.train.optim, fused=not reference)
    forward = torch.compile(model) if variant == "compiled" else model
    grad_clip = run.params.train.optim.grad_clip
    batch = random_batch(bench, run.device, torch.Generator().manual_seed(run.seed))
    generator = torch.Generator(device=run.device).manual_seed(run.seed)

    def step() -> None:
        use_reference_kernels(model, reference)  # the variants share one model
        with autocast(run):
            loss = forward(batch, run.objective, generator).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


Shape = tuple[int, ...]  # FlopCounterMode hands formulas the shapes, not the tensors


def _cpu_sdpa_flops(query: Shape, key: Shape, value: Shape, *_: object, **__: object) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad_out: Shape, query: Shape, key: Shape, value: Shape, *_: object, **__: object
) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's FLOP registry knows the CUDA attention kernels only: on CPU, SDPA dispatches to the
# flash-for-CPU ops, which it would count as 0 FLOPs. Same formulas as the CUDA kernels.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def training_flops(bench: Bench, run: Run) -> int:
    """Matmul, convolution and attention FLOPs of one forward + backward at the bench batch."""
    model = bench.model.to(run.device).train()
    batch = random_batch(bench, run.device, torch.Generator().manual_seed(run.seed))
    generator = torch.Generator(device=run.device).manual_seed(run.seed)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        with autocast(run):
            loss = model(batch, run.objective, generator).total
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def best_step_seconds(steps: dict[str, Callable[[], None]], workload: Workload, device) -> dict:
    """Seconds per step of each variant: `workload.warmup` untimed steps (the first one,
    timed apart, holds a compile), then `ROUNDS` alternating rounds of `workload.steps`."""
    first = {}
    for variant, step in steps.items():
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        first[variant] = time.perf_counter() - started
        for _ in range(workload.warmup - 1):
            step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(ROUNDS):
        for variant, step in steps.items():
            seconds = best_seconds(lambda s=step: [s() for _ in range(workload.steps)], 1, device)
            best[variant] = min(best[variant], seconds / workload.steps)
    return {"step": best, "first": first}


def report_training(bench: Bench, run: Run, peak: float, variants: list[str]) -> None:
    b, s, w = bench.workload.batch, bench.shapes, bench.workload
    flops = training_flops(bench, run)
    timings = best_step_seconds({v: training_step(bench, run, v) for v in variants}, w, run.device)
    print(
        f"  training   batch {b}, {w.steps} timed steps x {ROUNDS} rounds after {w.warmup} "
        f"warm-up; {flops / 1e9:.1f} GFLOP/step (fwd+bwd); "
        f"{s.frames} frames + {s.text_tokens} text tokens per sample"
    )
    if run.device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(run.device)
        print(f"    peak GPU memory over the variants: {peak_bytes / 2**30:.1f} GiB")
        torch.cuda.reset_peak_memory_stats(run.device)
    baseline = timings["step"]["reference"]
    for variant in variants:
        seconds = timings["step"][variant]
        compiled = variant == "compiled"
        note = f"   (first step {timings['first'][variant]:.0f} s: compile)" if compiled else ""
        print(
            f"    {variant:<10} {seconds * 1e3:8.0f} ms/step  {b / seconds:7.2f} samples/s  "
            f"{flops / seconds / 1e9:7.1f} GFLOP/s  MFU {flops / seconds / peak:6.1%}  "
            f"x{baseline / seconds:.2f} vs reference{note}"
        )


# --------------------------------------------------------------------------- sampling
def report_sampling(bench: Bench, run: Run, frame_rate: int) -> None:
    """Latents only: guided Euler from noise for `evaluate.batch_size` prompts per call, as
    the evaluate stage samples them, with the reference kernels and the speed-ups in turn."""
    backbone = bench.model.backbone.to(run.device).eval()
    s, sample = bench.shapes, run.params.sample
    prompts = run.params.evaluate.batch_size  # per sampling call, as the evaluate stage
    generator = torch.Generator().manual_seed(run.seed)

    def condition() -> dict[str, torch.Tensor]:
        values = {
            "text": torch.randn(prompts, s.text_tokens, s.text_dim, generator=generator),
            "clap_text": torch.randn(prompts, s.condition_dim, generator=generator),
        }
        if backbone.quality_embedding is not None:
            level = run.params.quality.inference_level  # paper 003 eq. (7), both branches
            values["quality_level"] = torch.full((prompts,), level)
        return {key: value.to(run.device) for key, value in values.items()}

    conditions = condition(), condition()
    velocities = {  # the reference repeats x for each condition set: the stem runs twice
        variant: guided(
            velocity_of(backbone, variant != "reference"), *conditions, sample.cfg_scale
        )
        for variant in ("reference", "speed-ups")
    }
    noise = torch.randn(prompts, s.frames, s.latent_dim, generator=generator)
    noise = noise.to(run.device)
    timed = min(bench.workload.sample_steps or sample.steps, sample.steps)
    best = dict.fromkeys(velocities, float("inf"))
    with torch.inference_mode(), autocast(run):
        solve(velocities["speed-ups"], noise, 1, sample.solver)  # warm-up
        for _ in range(ROUNDS):
            for variant, velocity in velocities.items():
                use_reference_kernels(backbone, variant == "reference")
                seconds = best_seconds(
                    lambda v=velocity: solve(v, noise, timed, sample.solver), 1, run.device
                )
                best[variant] = min(best[variant], seconds)
    use_reference_kernels(backbone, False)
    # Every solver step is the same network call on the same shapes, so the time of k steps
    # scales exactly to the full schedule; the solver's own arithmetic is negligible.
    how = "timed" if timed == sample.steps else f"{timed} steps timed, extrapolated"
    print(
        f"  sampling   {prompts} prompts x {s.frames / frame_rate:g} s, {sample.steps} "
        f"{sample.solver} steps, CFG {sample.cfg_scale:g} (batch {2 * prompts} per call), "
        f"latents only ({how})"
    )
    audio_seconds = prompts * s.frames / frame_rate
    for variant, seconds in best.items():
        per_evaluation = seconds / function_evaluations(sample.solver, timed)
        total = per_evaluation * function_evaluations(sample.solver, sample.steps)
        print(
            f"    {variant:<10} {total:8.2f} s  {prompts / total:7.2f} clips/s  "
            f"real-time factor {audio_seconds / total:7.2f}x  "
            f"{per_evaluation * 1e3:7.1f} ms per function evaluation  "
            f"x{best['reference'] / seconds:.2f} vs reference"
        )


# --------------------------------------------------------------------------- profile
# Kernels whose time is set by their FLOPs (or, for AdamW's fused update, by one pass over the
# weights): fusion and layout changes leave them as they are.
GEMM_BOUND_OPS = (
    "aten::convolution_backward",
    "aten::mkldnn_convolution",
    "aten::convolution",
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_fused_adamw_",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)


def gemm_bound_share(events: list) -> float:
    """The share of self CPU time spent in `GEMM_BOUND_OPS`."""
    total = sum(event.self_cpu_time_total for event in events)
    bound = sum(event.self_cpu_time_total for event in events if event.key in GEMM_BOUND_OPS)
    return bound / total if total else float("nan")


def report_profile(bench: Bench, run: Run, steps: int, rows: int) -> None:
    """torch.profiler over a few training steps (after one warm-up), ops by self CPU time:
    on CPU, where the time goes; on CUDA, the host-side launch cost (kernels recorded too)."""
    step = training_step(bench, run, "speed-ups")
    step()
    activities = [ProfilerActivity.CPU]
    if run.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronize(run.device)
    print(
        f"\nprofile: {bench.name} training, batch {bench.workload.batch}, {steps} steps "
        f"({run.device.type})"
    )
    events = profiler.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    share = gemm_bound_share(list(events))
    print(
        f"GEMM-bound kernels: {share:.0%} of self CPU time; removing all the rest would make "
        f"the step at most {1 / share:.2f}x faster"
    )


# --------------------------------------------------------------------------- main
def warn_if_loaded() -> None:
    """Other processes on the cores make OpenMP threads spin-wait for descheduled peers: a
    training step can then take 10x longer, far more than its share of the machine."""
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"note: load average {load:.1f} on {cores} cores before this run; if other jobs "
            "are running, rerun with OMP_WAIT_POLICY=PASSIVE or --threads 1 for stable figures"
        )


def report_parameters(bench: Bench) -> None:
    model = bench.model
    heads = trainable_parameters(model) - trainable_parameters(model.backbone)
    print(
        f"\n{bench.name}: {trainable_parameters(model) / 1e6:.2f} M trainable parameters "
        f"(backbone {trainable_parameters(model.backbone) / 1e6:.2f} M, "
        f"REPA heads {heads / 1e6:.2f} M)"
    )


BUILDERS: dict[str, Callable[[Params, Workload], Bench]] = {
    "embedded": embedded_bench,
    "fluxaudio_s": partial(paper_bench, "fluxaudio_s"),
    "table2_450m": partial(paper_bench, "table2_450m"),  # paper 000 Table II, ~450M
}
DEFAULT_CONFIGS = ["embedded", "fluxaudio_s"]  # table2_450m: ~4x FluxAudio-S, a GPU's job


def default_workload(name: str, device: torch.device) -> Workload:
    """Small enough for ~3 minutes on 2 CPU cores; a GPU affords real batches."""
    if device.type == "cuda":
        return Workload(
            batch=16 if name == "embedded" else 32, steps=20, warmup=5, sample_steps=None
        )
    if name == "embedded":
        return Workload(batch=16, steps=8, warmup=2, sample_steps=None)
    # ~4 s per training step and per guided call on 2 cores: 3 sampling steps, extrapolated.
    return Workload(batch=2, steps=3, warmup=1, sample_steps=3)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(BUILDERS), default=DEFAULT_CONFIGS)
    parser.add_argument("--batch", type=int, default=None, help="default: per config and device")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument(
        "--sample-steps", type=int, default=None, help="solver steps timed (default: all on GPU)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="default: bf16 on cuda, fp32 on cpu",
    )
    parser.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    parser.add_argument(
        "--compile", action="store_true", help="also time the speed-ups + torch.compile"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile each config's training"
    )
    parser.add_argument("--profile-steps", type=int, default=3)
    return parser.parse_args()


def workload_for(name: str, args: argparse.Namespace, device: torch.device) -> Workload:
    default = default_workload(name, device)
    return Workload(
        batch=args.batch or default.batch,
        steps=args.steps or default.steps,
        warmup=default.warmup if args.warmup is None else args.warmup,
        sample_steps=args.sample_steps or default.sample_steps,
    )


def main() -> None:
    args = parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    # The cores this process may use (a container's cgroup/affinity), not the host's count.
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    params = load_params()
    torch.manual_seed(params.seed)
    run = Run(
        device,
        PRECISIONS[precision],
        objective_config(params.model, params.train.timestep),
        params,
        params.seed,
    )
    warn_if_loaded()
    started = time.perf_counter()
    peak = matmul_peak(device, run.dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{where}, {torch.get_num_threads()} torch threads, {precision}: measured matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s (best of {PEAK_REPEATS}, n={PEAK_SIZE[device.type]})"
    )
    for name in args.configs:
        bench = BUILDERS[name](params, workload_for(name, args, device))
        report_parameters(bench)
        variants = ["reference", "speed-ups"] + (["compiled"] if args.compile else [])
        report_training(bench, run, peak, variants)
        report_sampling(bench, run, params.latents.mel25.frame_rate)
        if args.profile:
            report_profile(bench, run, args.profile_steps, rows=15)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
