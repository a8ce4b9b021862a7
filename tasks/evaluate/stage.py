"""The `evaluate` stage: generate for held-out prompts, score, report
(docs/architecture.md, the DAG).

Generates `evaluate.generations_per_prompt` seeded clips per prompt with a trained model
(`evaluate.checkpoint`, the fine-tuned one by default), then scores them against the
reference set with both papers' metrics and bootstrap intervals over prompts
(tasks/evaluate/summary.py): CLAP score, FAD over CLAP and over the frame teacher (+ FAD-inf),
paired KL and IS over zero-shot tags, p-MOS, attribute accuracy. Two rows frame every
number: the reference audio itself (the ceiling) and decoded random latents (the floor).
The p-MOS control curve of paper 003 Fig. 3 regenerates the prompts at every requested
quality level with the same noise.

CCS (the ATTM challenge's Concept Coverage Score) is not computed: its definition is not in
the challenge's published material we could read (docs/reference.md §B.2), and the report says so.

Outputs: reports/metrics.json (DVC metrics), reports/evaluation.md, reports/evaluate/ (CSV
+ PNG plots, per-clip table), reports/listening/ (HTML page + audio, DVC-cached), and the
same in the stage's MLflow run. `evaluate.profile: trial` (what sweep and table trials run)
computes only the ranking metrics instead (tasks/evaluate/trial.py).
"""

from __future__ import annotations

import numpy as np

from tasks.common.tracking import stage_run
from tasks.evaluate.generated import GeneratedSet, random_latent_set
from tasks.evaluate.loading import Context, load, load_prompts
from tasks.evaluate.report import EvaluationResult, write_reports
from tasks.evaluate.scoring import ClipScores, attribute_hits, score_clips
from tasks.evaluate.summary import BootstrapSettings, Reference, ScoredSet, Summariser
from tasks.evaluate.trial import run_trial, write_trial_reports
from tasks.params import Params, load_stage_params


def score_set(name: str, clips: GeneratedSet, context: Context, analyse: bool) -> ScoredSet:
    scores = score_clips(clips.audio, context.sample_rate, context.scorers, analyse)
    return with_hits(name, scores, clips.prompt_index, context)


def with_hits(name: str, scores: ClipScores, prompt_index: np.ndarray, context: Context):
    prompts = [context.prompts.prompts[i] for i in prompt_index]
    truth = [context.truth[i] for i in prompt_index]
    hits = attribute_hits(scores, context.scorers.tags, prompts, truth)
    return ScoredSet(name, scores, prompt_index, hits)


def curve_sets(generated: GeneratedSet, params: Params, generate) -> dict[int, GeneratedSet]:
    """Paper 003 Fig. 3: one clip per prompt at each level, with the noise of seed 0; the
    level the main set was generated at is its seed-0 clips, not a second run."""
    sets = {}
    for level in params.evaluate.quality_levels:
        if level == generated.level:
            rows = generated.seed_index == 0
            sets[level] = GeneratedSet(
                generated.audio[rows],
                generated.prompt_index[rows],
                generated.seed_index[rows],
                level,
            )
        else:
            sets[level] = generate([0], level)
    return sets


def run(params: Params) -> EvaluationResult:
    e = params.evaluate
    loaded = load(params, load_prompts(params))
    backbone, codec, clap, context = loaded.backbone, loaded.codec, loaded.clap, loaded.context
    scorers = context.scorers
    prompts = context.prompts.prompts
    has_quality = backbone.quality_embedding is not None or params.quality.use_prefix

    def generate(seeds, level=None) -> GeneratedSet:
        return loaded.generate(params, seeds, level)

    generated = generate(range(e.generations_per_prompt))
    audio = {
        "generated": generated,
        "random_latents": random_latent_set(backbone, len(prompts), codec, params.seed),
    }
    curve_audio = curve_sets(generated, params, generate) if has_quality else {}

    reference_scores = score_clips(context.reference.clips, codec.sample_rate, scorers, True)
    paired = context.paired_rows()
    with_pair = np.flatnonzero(paired >= 0)
    sets = {name: score_set(name, clips, context, True) for name, clips in audio.items()}
    sets["reference"] = with_hits(
        "reference", reference_scores.take(paired[with_pair]), with_pair, context
    )
    summariser = Summariser(
        np.asarray(clap.embed_text(prompts), dtype=np.float64),
        Reference(reference_scores, paired),
        BootstrapSettings(e.confidence, e.bootstrap_resamples, params.seed),
        e.fad_infinity,
    )
    metrics = {name: summariser.summarise(s, name != "reference") for name, s in sets.items()}
    curve = {
        level: summariser.summarise(score_set(f"level_{level}", clips, context, False))
        for level, clips in curve_audio.items()
    }
    return EvaluationResult(
        prompts=context.prompts,
        reference=context.reference,
        sets=sets,
        audio=audio,
        clap_scores={name: summariser.clap_scores(s) for name, s in sets.items()},
        metrics=metrics,
        curve=curve,
        tags=scorers.tags,
        paired_rows=paired,
        sample_rate=codec.sample_rate,
    )


def main() -> None:
    params = load_stage_params()
    with stage_run(params, "evaluate"):
        if params.evaluate.profile == "trial":
            summary = write_trial_reports(run_trial(params), params)
        else:
            summary = write_reports(run(params), params)
    generated = summary["generated"]
    print(
        "evaluate: "
        + ", ".join(
            f"{name} {generated[name]['value']:.3f} [{generated[name]['low']:.3f}, "
            f"{generated[name]['high']:.3f}]"
            for name in ("clap_score", "fad_clap", "kl", "pmos")
            if name in generated
        )
    )
