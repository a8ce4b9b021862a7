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
same in the stage's MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.backends.clap import load_clap
from tasks.backends.codec import load_codec
from tasks.backends.frame_teacher import load_frame_teacher
from tasks.backends.quality import load_quality
from tasks.backends.text_encoder import load_text_encoder
from tasks.common.generation import PromptEncoders
from tasks.common.preflight import evaluation_prompt_problems, require
from tasks.common.text_conditioning import TORCH_DTYPES
from tasks.common.tracking import stage_run
from tasks.evaluate.generated import GeneratedSet, generate_set, random_latent_set
from tasks.evaluate.inputs import (
    ATTRIBUTES,
    PromptSet,
    ReferenceSet,
    corpus_prompts,
    corpus_reference_files,
    folder_reference_files,
    read_reference,
    tsv_prompts,
)
from tasks.evaluate.report import EvaluationResult, write_reports
from tasks.evaluate.scoring import ClipScores, Scorers, attribute_hits, score_clips, tag_vocabulary
from tasks.evaluate.summary import BootstrapSettings, Reference, ScoredSet, Summariser
from tasks.params import Params, load_stage_params
from tasks.train.checkpoints import load_backbone


def load_prompts(params: Params) -> PromptSet:
    if params.evaluate.prompts is None:
        return corpus_prompts(Path(params.data.root))
    return tsv_prompts(Path(params.evaluate.prompts))


def load_reference(params: Params, sample_rate: int, seconds: float) -> ReferenceSet:
    e = params.evaluate
    if e.reference_audio is None:
        files, source = corpus_reference_files(Path(params.data.root)), "corpus test split"
    else:
        files = folder_reference_files(Path(e.reference_audio), params.data.ingest.audio_extensions)
        source = e.reference_audio
    return read_reference(
        files, sample_rate, seconds, e.reference_windows, params.data.ingest.silence_dbfs, source
    )


def check_levels(params: Params, model_levels: int) -> None:
    levels = params.quality.levels if model_levels == 0 else model_levels
    bad = [level for level in params.evaluate.quality_levels if level > levels]
    if bad:
        raise ValueError(f"evaluate.quality_levels: {bad} exceed the model's {levels} levels")


@dataclass(frozen=True)
class Context:
    prompts: PromptSet
    reference: ReferenceSet
    scorers: Scorers
    sample_rate: int

    @property
    def truth(self) -> list[dict]:
        """Each prompt's known attributes (the embedded prompt set has them; a TSV has none)."""
        columns = [c for c in ATTRIBUTES if c in self.prompts.table.columns]
        return self.prompts.table[columns].to_dict("records")

    def paired_rows(self) -> np.ndarray:
        """[P] each prompt's first reference window, -1 where it has none."""
        rows = [self.reference.first_clip(rid) for rid in self.prompts.table["reference_id"]]
        return np.array([-1 if row is None else row for row in rows])


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
    prompt_set = load_prompts(params)
    require(evaluation_prompt_problems(len(prompt_set.prompts), params), "evaluate")
    backbone = load_backbone(Path(e.checkpoint))
    has_quality = backbone.quality_embedding is not None or params.quality.use_prefix
    check_levels(params, backbone.config.quality_levels)
    codec = load_codec(params.backends.codec, params.latents.mel25)
    seconds = backbone.config.latent_seq_len / codec.frame_rate
    clap = load_clap(params.backends.clap)
    scorers = Scorers(
        clap,
        load_quality(params.backends.quality),
        load_frame_teacher(params.backends.frame_teacher),
        tag_vocabulary(clap, e.batch_size),
        e.tag_temperature,
        e.batch_size,
    )
    context = Context(
        prompt_set,
        load_reference(params, codec.sample_rate, seconds),
        scorers,
        codec.sample_rate,
    )
    encoders = PromptEncoders(
        load_text_encoder(params.backends.text_encoder),
        clap,
        TORCH_DTYPES[params.latents.text_dtype],
    )
    prompts = context.prompts.prompts
    torch.manual_seed(params.seed)

    def generate(seeds, level=None) -> GeneratedSet:
        return generate_set(
            backbone,
            prompts,
            encoders=encoders,
            codec=codec,
            clap=clap,
            params=params,
            seeds=seeds,
            level=level,
        )

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
        result = run(params)
        summary = write_reports(result, params)
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
