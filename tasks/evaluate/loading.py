"""What both evaluation profiles load: the trained model, its codec, the scorers, the
prompt set and the reference set (tasks/evaluate/stage.py: full, tasks/evaluate/trial.py: trial).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.fluxaudio import FluxAudio
from tasks.backends.base import ClapBackend, CodecBackend
from tasks.backends.clap import load_clap
from tasks.backends.codec import load_codec
from tasks.backends.frame_teacher import load_frame_teacher
from tasks.backends.quality import load_quality
from tasks.backends.text_encoder import load_text_encoder
from tasks.common.generation import PromptEncoders
from tasks.common.preflight import evaluation_prompt_problems, require
from tasks.common.text_conditioning import TORCH_DTYPES
from tasks.evaluate.generated import GeneratedSet, generate_set
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
from tasks.evaluate.scoring import Scorers, tag_vocabulary
from tasks.params import Params
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


@dataclass(frozen=True)
class Loaded:
    """The model, its codec and the scorers, with the prompt and reference sets."""

    backbone: FluxAudio
    codec: CodecBackend
    clap: ClapBackend
    context: Context
    encoders: PromptEncoders

    def generate(self, params: Params, seeds, level=None) -> GeneratedSet:
        return generate_set(
            self.backbone,
            self.context.prompts.prompts,
            encoders=self.encoders,
            codec=self.codec,
            clap=self.clap,
            params=params,
            seeds=seeds,
            level=level,
        )


def load(params: Params, prompt_set: PromptSet) -> Loaded:
    e = params.evaluate
    require(evaluation_prompt_problems(len(prompt_set.prompts), params), "evaluate")
    backbone = load_backbone(Path(e.checkpoint))
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
    torch.manual_seed(params.seed)
    return Loaded(backbone, codec, clap, context, encoders)
