"""`captions` stage: paper 003 §4.3 refinement, then paper 000 §II-B's two-stage captions.

For every kept segment of `data/curated/segments.parquet`:

1. re-caption the audio with the captioner backend (003 §4.3 step 1);
2. score the original caption (`captions.refine_column`) and the generated one against
   the audio, and against each other, with the CLAP backend, and decide per segment
   (tasks/captions/refinement.py: filter eq. (8), discard eq. (9), merge eq. (10));
3. merge where eq. (10) says so with the rewriter's merge prompt (003 §5.2);
4. rewrite the refined caption into the concise inference style with the rewriter's
   prompt (000 §II-B), few-shot examples drawn from the concise prompt distribution;
5. choose the fine-tune subset (000 Table II: 40 %), seeded.

Writes data/captions/captions.parquet (CAPTION_COLUMNS) and reports/captions.{json,md}
with reports/captions/*.csv (tasks/captions/report.py); everything is logged to MLflow.
Audio CLAP embeddings come from the content cache `curate` filled (tasks/common/score_cache.py).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from tasks.backends.base import CaptionerBackend, ClapBackend, RewriterBackend, Rewritten
from tasks.backends.captioner import embedded_vocabulary_texts, load_captioner
from tasks.backends.clap import load_clap, text_embeddings
from tasks.backends.rewriter import load_rewriter
from tasks.captions.refinement import (
    KEEP_ORIGINAL,
    MERGE,
    CaptionRun,
    calibrate,
    captioner_gate,
    decide,
    finetune_subset,
)
from tasks.captions.report import write_reports
from tasks.common import schema
from tasks.common.atomic import write_parquet
from tasks.common.audio_io import segment_windows
from tasks.common.health import vocabulary_coverage, words_of
from tasks.common.preflight import caption_column_problems, present, require
from tasks.common.reporting import log_report
from tasks.common.schema import CAPTION_COLUMNS, SEGMENT_COLUMNS, corpus_sample_rate
from tasks.common.score_cache import CachedScorer, ScoreCache, backend_identity, cache_directory
from tasks.common.tracking import stage_run
from tasks.params import Params, load_stage_params

CAPTIONS = Path("data/captions/captions.parquet")


@dataclass(frozen=True)
class CaptionBackends:
    clap: ClapBackend  # audio embeddings through the content cache (CachedClap)
    captioner: CaptionerBackend
    rewriter: RewriterBackend


class CachedClap:
    """A ClapBackend whose audio embeddings go through the content cache `curate` filled."""

    def __init__(self, clap: ClapBackend, audio: CachedScorer) -> None:
        self.clap, self.audio = clap, audio
        self.sample_rate, self.embedding_dim = clap.sample_rate, clap.embedding_dim

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        return np.stack(self.audio.run(waveforms, sample_rate))

    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        return self.clap.embed_text(captions)


# --------------------------------------------------------------------------- inputs
# Stand-ins for a caption style the track lacks, in order of preference. Ingest keeps a file
# with at least one style and curate checks only `curate.caption_column`, so a kept track
# may lack one. The fallback lives here, not in `latents`: this stage writes the one table
# every later stage reads its captions from, with their provenance (`caption_style_fallback`
# beside merge_backend / rewrite_backend), and refinement (captions.refine_column) needs the
# caption before latents ever runs; `latents` only checks that every caption is there.
STYLE_STAND_INS = {
    "caption_holistic": ("caption_dense", "prompt_concise"),
    "caption_dense": ("caption_holistic", "prompt_concise"),
}


def fill_missing_styles(kept: pd.DataFrame) -> pd.DataFrame:
    """Each missing caption style takes the first recorded stand-in, said in
    `caption_style_fallback`; a segment with no caption of any style is an error."""
    out = kept.reset_index(drop=True)
    notes: list[list[str]] = [[] for _ in range(len(out))]
    recorded = {c: present(out[c]) for c in ("caption_holistic", "caption_dense", "prompt_concise")}
    for column, stand_ins in STYLE_STAND_INS.items():
        for stand_in in stand_ins:
            use = ~present(out[column]) & recorded[stand_in]
            out.loc[use, column] = out.loc[use, stand_in]
            for row in np.flatnonzero(use.to_numpy()):
                notes[row].append(f"{column} from {stand_in}")
        unfilled = ~present(out[column])
        if unfilled.any():
            tracks = sorted(set(out.loc[unfilled, "track_id"].astype(str)))
            raise ValueError(
                f"tracks {tracks[:5]} have no caption of any style; curate should have "
                f"rejected them (curate.caption_column)"
            )
    out["caption_style_fallback"] = pd.array(
        [" and ".join(n) if n else pd.NA for n in notes], dtype="string"
    )
    return out.drop(columns=["prompt_concise"])


def kept_segments(segments: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """Kept segments in (track, start) order with both caption styles, filled where missing."""
    schema.check_columns(segments, SEGMENT_COLUMNS, "segments.parquet")
    kept = segments[segments["kept"]].sort_values(["track_id", "candidate_index"])
    captions = tracks[["track_id", "caption_holistic", "caption_dense", "prompt_concise"]]
    kept = kept.merge(captions, on="track_id", how="left", validate="many_to_one")
    return fill_missing_styles(kept).reset_index(drop=True)


def few_shot_pool(tracks: pd.DataFrame, eval_prompts: pd.DataFrame) -> tuple[list[str], str]:
    """Examples of the target style for the rewriting prompt's {examples} (000 §II-B).

    The train split's concise prompts come from the same distribution as the evaluation
    prompts without leaking the held-out ones into training; a real dataset without a
    concise caption source falls back to the evaluation prompt file, as the paper does.
    """
    train = tracks.loc[tracks["split"] == "train", "prompt_concise"].dropna()
    pool = sorted(set(train.astype(str)) - {""})
    if pool:
        return pool, "train prompt_concise"
    prompts = sorted(set(eval_prompts["prompt"].dropna().astype(str)) - {""})
    if not prompts:
        raise ValueError("no concise prompts for the rewriter's few-shot {examples}")
    return prompts, "eval_prompts.parquet"


def captioner_coverage(tracks: pd.DataFrame, params: Params) -> dict:
    """How much of the dataset's `captions.refine_column` vocabulary the captioner can write
    (the embedded one: its templates and class words; an open-vocabulary one: not measured)."""
    if params.backends.captioner.name != "embedded":
        return {"note": f"backends.captioner = {params.backends.captioner.name}: open vocabulary"}
    column = params.captions.refine_column
    captions = tracks.loc[present(tracks[column]), column].astype(str)
    return vocabulary_coverage(captions, words_of(embedded_vocabulary_texts()))


# --------------------------------------------------------------------------- steps
def batched(items: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def describe_audio(
    kept: pd.DataFrame,
    tracks: pd.DataFrame,
    params: Params,
    clap: ClapBackend,
    captioner: CaptionerBackend,
) -> tuple[np.ndarray, list[str]]:
    """(audio embeddings [N, D], generated captions) in `kept` order, streaming the audio."""
    rate, size = corpus_sample_rate(tracks), params.captions.batch_size
    windows = segment_windows(kept, tracks, Path(params.data.root), rate)
    embeddings, generated = [], []
    for chunk in batched(windows, size):
        embeddings.append(clap.embed_audio(chunk, rate))
        generated.extend(captioner.caption(chunk, rate))
    if len(generated) != len(kept):
        raise RuntimeError(f"captioner returned {len(generated)} captions for {len(kept)}")
    return np.concatenate(embeddings), generated


def embed_unique(clap: ClapBackend, captions: Sequence[str], batch_size: int) -> np.ndarray:
    """CLAP text embeddings, one text-tower pass per distinct caption."""
    unique = sorted(set(captions))
    table = text_embeddings(clap, unique, batch_size)
    row = {caption: i for i, caption in enumerate(unique)}
    return table[[row[caption] for caption in captions]]


def refine(
    original: list[str],
    generated: list[str],
    decisions: np.ndarray,
    rewriter: RewriterBackend,
) -> tuple[list[str], list[Rewritten | None]]:
    """The refined caption of every segment; the merge provenance where a merge happened."""
    refined: list[str] = []
    merges: list[Rewritten | None] = [None] * len(original)
    to_merge = np.flatnonzero(decisions == MERGE)
    merged = rewriter.merge([original[i] for i in to_merge], [generated[i] for i in to_merge])
    for index, result in zip(to_merge, merged, strict=True):
        merges[index] = result
    for index, decision in enumerate(decisions):
        if decision == KEEP_ORIGINAL:
            refined.append(original[index])
        elif decision == MERGE:
            refined.append(merges[index].text)  # type: ignore[union-attr]
        else:  # USE_GENERATED or GENERATED_REDUNDANT
            refined.append(generated[index])
    return refined, merges


def rewrite(refined: list[str], rewriter: RewriterBackend, examples: list[str]) -> list[Rewritten]:
    """Each distinct refined caption rewritten once, in a fixed (sorted) order."""
    unique = sorted(set(refined))
    by_caption = dict(zip(unique, rewriter.rewrite(unique, examples), strict=True))
    return [by_caption[caption] for caption in refined]


def _validation_scores(kept: pd.DataFrame, *scores: np.ndarray) -> list[np.ndarray]:
    val = (kept["split"] == "val").to_numpy()
    return [score[val] for score in scores]


REFINEMENT_OFF = (
    "captions.refine is false: refinement is off (paper 003 §4.3 ablation), every original "
    "caption is kept; the generated captions are still scored for comparison"
)


def caption_segments(
    kept: pd.DataFrame,
    tracks: pd.DataFrame,
    eval_prompts: pd.DataFrame,
    params: Params,
    backends: CaptionBackends,
) -> CaptionRun:
    """The whole stage minus file output."""
    cfg, clap, rewriter = params.captions, backends.clap, backends.rewriter
    original = kept[cfg.refine_column].astype(str).tolist()
    audio, generated = describe_audio(kept, tracks, params, clap, backends.captioner)
    original_text = embed_unique(clap, original, cfg.batch_size)
    generated_text = embed_unique(clap, generated, cfg.batch_size)
    clap_original = np.einsum("nd,nd->n", audio, original_text)
    clap_generated = np.einsum("nd,nd->n", audio, generated_text)
    text_similarity = np.einsum("nd,nd->n", original_text, generated_text)
    thresholds = calibrate(
        cfg, *_validation_scores(kept, clap_generated, clap_original, text_similarity)
    )
    decisions = decide(clap_generated, clap_original, text_similarity, thresholds)
    gate = captioner_gate(
        captioner_coverage(tracks, params),
        cfg.min_captioner_coverage,
        params.backends.captioner.name,
    )
    if not cfg.refine:  # the ablation row: scored as usual, nothing replaced
        gate = {**gate, "keeps_originals": True, "reason": REFINEMENT_OFF}
    if gate["keeps_originals"]:
        decisions[:] = KEEP_ORIGINAL
    refined, merges = refine(original, generated, decisions, rewriter)
    examples, source = few_shot_pool(tracks, eval_prompts)
    rewrites = rewrite(refined, rewriter, examples)
    inference = [r.text for r in rewrites]
    clap_refined = np.einsum("nd,nd->n", audio, embed_unique(clap, refined, cfg.batch_size))
    clap_inference = np.einsum("nd,nd->n", audio, embed_unique(clap, inference, cfg.batch_size))
    train = (kept["split"] == "train").to_numpy()
    finetune = np.zeros(len(kept), dtype=bool)
    train_ids = kept.loc[train, "segment_id"].astype(str).tolist()
    finetune[train] = finetune_subset(train_ids, cfg.finetune_fraction, params.seed)
    table = pd.DataFrame(
        {
            "segment_id": kept["segment_id"],
            "track_id": kept["track_id"],
            "split": kept["split"],
            "finetune": finetune,
            "caption_holistic": kept["caption_holistic"],
            "caption_dense": kept["caption_dense"],
            "caption_style_fallback": kept["caption_style_fallback"],
            "caption_generated": generated,
            "caption_refined": refined,
            "caption_inference": inference,
            "refinement": decisions.astype(str),
            "clap_original": clap_original,
            "clap_generated": clap_generated,
            "text_similarity": text_similarity,
            "clap_refined": clap_refined,
            "clap_inference": clap_inference,
            "captioner": params.backends.captioner.name,
            "merge_backend": [m.backend if m else None for m in merges],
            "merge_fallback": [m.fallback if m else None for m in merges],
            "rewrite_backend": [r.backend for r in rewrites],
            "rewrite_fallback": [r.fallback for r in rewrites],
        }
    )
    return CaptionRun(table.astype(CAPTION_COLUMNS), thresholds, source, gate)


# --------------------------------------------------------------------------- stage


def run(params: Params) -> dict:
    """Caption the kept segments of data/curated into data/captions and reports/."""
    started = time.perf_counter()
    corpus_root = Path(params.data.root)
    tracks = pd.read_parquet(corpus_root / "tracks.parquet")
    eval_prompts = pd.read_parquet(corpus_root / "eval_prompts.parquet")
    require(
        caption_column_problems(tracks, params.captions.refine_column, "captions.refine_column"),
        "captions",
    )
    segments = pd.read_parquet(Path("data/curated/segments.parquet"))
    kept = kept_segments(segments, tracks)
    with stage_run(params, "captions"):
        clap = load_clap(params.backends.clap)
        rewriter = load_rewriter(params.backends.rewriter, params.captions, params.seed)
        with ScoreCache(cache_directory(params.curate.cache_dir)) as cache:
            audio = CachedScorer(
                cache,
                "clap_audio",
                backend_identity("clap", params.backends.clap),
                clap.embed_audio,
                params.captions.batch_size,
            )
            cached = CachedClap(clap, audio)
            captioner = load_captioner(params.backends.captioner, cached, params.captions)
            backends = CaptionBackends(cached, captioner, rewriter)
            result = caption_segments(kept, tracks, eval_prompts, params, backends)
            mlflow.log_metrics({f"cache.clap_audio.{k}": v for k, v in audio.stats().items()})
        write_parquet(CAPTIONS, result.table)
        report = write_reports(result, tracks, kept, params)
        log_report(report, "captions")
        mlflow.log_metric("stage_seconds", time.perf_counter() - started)
    return report.summary


def main() -> None:
    summary = run(load_stage_params())
    counts = summary["refinement_counts"]
    print(
        f"captions: {summary['segments']} segments; refinement {counts}; "
        f"{summary['rewrite_fallbacks']} rewrite fallbacks; CLAP "
        f"{summary['clap']['original']:.3f} -> {summary['clap']['refined']:.3f} (refined)"
    )
