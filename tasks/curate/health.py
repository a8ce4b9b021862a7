"""The label-free health checks of `curate`'s scorers on the val tracks, and their gate.

Computed before any other scoring (tasks/common/health.py says what each figure asks), shown
at the top of reports/curation.md, in reports/curation.json under `health` and in the
stage's MLflow run. When the CLAP cannot tell a val track's own caption from another
track's (ROC-AUC below `curate.min_clap_auc`), curation refuses: its tiers, S and the
refinement after it would all be noise on this music.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.backends.base import ClapBackend
from tasks.backends.captioner import EmbeddedCaptioner, embedded_vocabulary_texts
from tasks.backends.clap import text_embeddings
from tasks.common.health import (
    NOT_MEASURABLE,
    clap_health,
    quality_health,
    tag_confidence,
    tag_health,
    vocabulary_coverage,
    words_of,
)
from tasks.common.preflight import present
from tasks.common.score_cache import CachedScorer
from tasks.params import Params
from tasks.synthesis.degradation import degrade

_DEGRADE_STREAM = 23  # seeded stream of the synthetic degradations (noise draws)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def track_embeddings(audio: np.ndarray, owners: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(track ids, [n, d]): each track's unit mean embedding over its scored windows."""
    ids = sorted(set(owners.tolist()))
    return ids, unit(np.stack([audio[owners == t].mean(axis=0) for t in ids]))


def clap_section(
    clap: ClapBackend, audio: np.ndarray, owners: np.ndarray, captions: dict, params: Params
) -> dict:
    if len(owners) == 0:
        return {"note": f"{NOT_MEASURABLE}: no scorable val track with a caption"}
    ids, per_track = track_embeddings(audio, owners)
    texts = [captions[t] for t in ids]
    text = text_embeddings(clap, texts, params.curate.batch_size)
    c = params.curate
    return clap_health(per_track, text, texts, params.seed, c.health_resamples, c.health_confidence)


def quality_section(clips: list[np.ndarray], scorer: CachedScorer, params: Params) -> dict:
    """Every val clip as recorded and degraded by each kind at each level 1..4."""
    if len(clips) < 3:
        return {"note": f"{NOT_MEASURABLE}: {len(clips)} scorable val track(s), 3 needed"}
    rate, degradation = params.data.sample_rate, params.data.degradation
    levels = list(range(1, len(degradation.snr_db) + 1))
    rng = np.random.default_rng([params.seed, _DEGRADE_STREAM])
    degraded = [
        degrade(clip, kind, level, degradation, rate, rng).astype(np.float32)
        for clip in clips
        for kind in degradation.kinds
        for level in levels
    ]
    original = np.concatenate(scorer.run(clips, rate))
    shape = (len(clips), len(degradation.kinds), len(levels))
    predicted = np.concatenate(scorer.run(degraded, rate)).reshape(shape)
    q, c = params.quality, params.curate
    scale = None if q.pmos_mean is None or q.pmos_std is None else (q.pmos_mean, q.pmos_std)
    return quality_health(
        original,
        predicted,
        levels,
        degradation.kinds,
        scale,
        q.level_edges_std,
        params.seed,
        c.health_resamples,
        c.health_confidence,
    )


def captioner_section(
    clap: ClapBackend, audio: np.ndarray, owners: np.ndarray, captions: list[str], params: Params
) -> dict:
    """Tag confidence on the val windows and vocabulary coverage of the dataset's captions
    (`captions.refine_column`, the captions refinement would replace)."""
    choice = params.backends.captioner
    if choice.name != "embedded":
        why = f"backends.captioner = {choice.name} writes open-vocabulary text without tag scores"
        return {"backend": choice.name, "note": f"{NOT_MEASURABLE}: {why}"}
    cfg = params.captions
    vocabulary = words_of(embedded_vocabulary_texts())
    section: dict = {
        "backend": choice.name,
        "vocabulary": vocabulary_coverage(captions, vocabulary),
    }
    if len(owners):
        captioner = EmbeddedCaptioner(clap, cfg.captioner_instruments, cfg.batch_size)
        genre = np.stack([tags.genre_scores for tags in captioner.tags_of(audio)])
        tags = tag_health(tag_confidence(genre), owners, cfg.tag_confidence_floor)
        section["tags"] = tags | {"chance": 1.0 / genre.shape[1]}
    return section


def dataset_captions(tracks: pd.DataFrame, params: Params) -> list[str]:
    column = params.captions.refine_column
    if column not in tracks:
        return []
    return tracks.loc[present(tracks[column]), column].astype(str).tolist()


# --------------------------------------------------------------------------- gate
def gate_problems(health: dict, params: Params) -> list[str]:
    """The CLAP gate (`curate.min_clap_auc`); empty when it passes or is disabled (0)."""
    floor = params.curate.min_clap_auc
    clap = health["clap"]
    if floor <= 0:
        return []
    if "auc" not in clap:
        return [
            f"curate.min_clap_auc = {floor} needs the CLAP's health figure on the val tracks, "
            f"and it is {clap['note']}: raise data.val_fraction, or set curate.min_clap_auc: 0 "
            "to curate without knowing whether the CLAP understands this music"
        ]
    auc = clap["auc"]
    if auc["value"] >= floor:
        return []
    backend = params.backends.clap.name
    return [
        f"curate.min_clap_auc = {floor}, and the CLAP (backends.clap.name = {backend}) scores a "
        f"val track's own caption above another track's caption with ROC-AUC {auc['value']:.3f} "
        f"[{auc['low']:.3f}, {auc['high']:.3f}] on {clap['tracks']} val tracks (0.5 = chance, "
        f"text->audio R@1 {clap['r_at_1']['value']:.3f} against chance "
        f"{clap['chance_r_at_1']:.3f}): it does not know this music, so its curation tiers "
        "would be noise. Use a CLAP that does: backends.clap.name: laion with a LAION-CLAP "
        "checkpoint (README, 'Pretrained parts'), or backends.clap.name: crossfit (trained on "
        "this dataset's own pairs); or lower curate.min_clap_auc to curate with this one anyway"
    ]


# --------------------------------------------------------------------------- markdown
def _ci(figure: dict) -> str:
    return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def markdown(health: dict, params: Params) -> str:
    """The health section at the top of reports/curation.md: figure, CI, chance, meaning."""
    level = f"{params.curate.health_confidence:.0%}"
    lines = [
        "## Scorer health on this data (label-free)",
        f"Measured on the dataset's own val tracks without ground truth; [{level} bootstrap "
        "interval over tracks]. Near chance, a scorer knows nothing about this music.",
    ]
    clap, quality, captioner = health["clap"], health["quality"], health["captioner"]
    if "auc" in clap:
        lines.append(
            f"- CLAP ({params.backends.clap.name}): own vs another track's caption ROC-AUC "
            f"{_ci(clap['auc'])} (chance 0.5, gate curate.min_clap_auc = "
            f"{params.curate.min_clap_auc}); text->audio R@1 {_ci(clap['r_at_1'])} (chance "
            f"{clap['chance_r_at_1']:.3f}), R@5 {_ci(clap['r_at_5'])} (chance "
            f"{clap['chance_r_at_5']:.3f}); {clap['tracks']} tracks."
        )
    else:
        lines.append(f"- CLAP: {clap['note']}.")
    if "spearman" in quality:
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in quality["spearman_by_kind"].items())
        place = (
            f"original clips at median z {quality['median_z_original']:+.2f} on the "
            f"quality.pmos_mean / pmos_std scale, {quality['share_outside_range']:.0%} outside "
            f"the levels' range z {quality['range_z'][0]:g}..{quality['range_z'][1]:g}"
            if "median_z_original" in quality
            else quality["calibration"]
        )
        lines.append(
            f"- p-MOS ({params.backends.quality.name}): Spearman ρ with the level of synthetic "
            f"degradations of the tracks' own clips {_ci(quality['spearman'])} (chance 0; by "
            f"kind: {kinds}); {place}."
        )
    else:
        lines.append(f"- p-MOS: {quality['note']}.")
    if "note" in captioner:
        lines.append(f"- Captioner: {captioner['note']}.")
    else:
        vocab, tags = captioner["vocabulary"], captioner.get("tags", {})
        covered = (
            f"covers {vocab['coverage']:.0%} of the words of this dataset's "
            f"{params.captions.refine_column} captions (refinement keeps the originals below "
            f"captions.min_captioner_coverage = {params.captions.min_captioner_coverage}; "
            f"most frequent words it cannot write: {', '.join(vocab['top_uncovered'][:5])})"
            if "coverage" in vocab
            else vocab["note"]
        )
        tagged = (
            f"{tags['share_confident']:.0%} of val tracks get a genre tag with zero-shot "
            f"probability >= captions.tag_confidence_floor = {tags['floor']:g} (median "
            f"{tags['median_confidence']:.2f}, chance {tags['chance']:.2f})"
            if "share_confident" in tags
            else "no val track tagged"
        )
        lines.append(f"- Captioner ({captioner['backend']}): {tagged}; its vocabulary {covered}.")
    return "\n\n".join([lines[0], lines[1], "\n".join(lines[2:])])
