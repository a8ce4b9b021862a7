"""Paper 003 §4.3 caption refinement decisions and paper 000 §II-B's fine-tune subset.

Pure functions over similarity arrays; `tasks/captions/stage.py` computes the similarities with
the CLAP backend and applies the decisions. Per kept segment, with the audio embedding a,
the original caption o and the captioner's caption g (all CLAP-embedded, unit norm):

- eq. (8)  a·g < τ_gen    -> the generated caption does not match its audio: keep o;
- eq. (9)  a·o < τ_orig   -> the original is useless or inaccurate: use g alone;
- eq. (10) o·g < τ_merge  -> the original adds what g lacks: merge o and g (LLM prompt of
           §5.2, "do not add any imaginary elements"); otherwise o is redundant: use g.

Paper 003 computes (10) as a CLAP *text-text* similarity ("for text-to-text and
text-to-audio similarity calculations", §5.2); the issue's shorthand "the original's
similarity below a second threshold" is (9) + (10) together.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from tasks.params import CaptionParams

KEEP_ORIGINAL = "original_kept"  # eq. (8): generated caption filtered out
USE_GENERATED = "generated_original_discarded"  # eq. (9)
MERGE = "merged"  # eq. (10), below the threshold
GENERATED_REDUNDANT = "generated_original_redundant"  # eq. (10), above the threshold
DECISIONS = (KEEP_ORIGINAL, USE_GENERATED, MERGE, GENERATED_REDUNDANT)

_FINETUNE_STREAM = 11  # seeded stream of the fine-tune subset, independent of the others


@dataclass(frozen=True)
class RefinementThresholds:
    generated: float  # τ_gen, eq. (8)
    original: float  # τ_orig, eq. (9)
    merge: float  # τ_merge, eq. (10)
    mode: str

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def calibrate(
    captions: CaptionParams,
    generated_val: np.ndarray,
    original_val: np.ndarray,
    text_val: np.ndarray,
) -> RefinementThresholds:
    """The thresholds as given (`absolute`), or the validation quantiles at the shares.

    Paper 003 §6.2 reports that filtering and fusion removed 8.9 % of the generated
    captions and fused 15.1 %: on a CLAP whose scale differs from LAION-CLAP's (the
    embedded one), those shares are what carries over, not the absolute numbers.
    """
    if captions.threshold_mode == "absolute":
        return RefinementThresholds(
            captions.generated_threshold,
            captions.original_threshold,
            captions.merge_threshold,
            "absolute",
        )
    for name, values in (("generated", generated_val), ("original", original_val)):
        if not np.isfinite(values).any():
            raise ValueError(
                f"captions.threshold_mode = validation_quantile needs validation segments "
                f"with a {name} caption score; the val split has none (use `absolute`)"
            )
    return RefinementThresholds(
        float(np.nanquantile(generated_val, captions.generated_filter_share)),
        float(np.nanquantile(original_val, captions.original_discard_share)),
        float(np.nanquantile(text_val, captions.merge_share)),
        "validation_quantile",
    )


def decide(
    generated_score: np.ndarray,
    original_score: np.ndarray,
    text_similarity: np.ndarray,
    thresholds: RefinementThresholds,
) -> np.ndarray:
    """One decision of DECISIONS per segment, eq. (8) first, then (9), then (10)."""
    decisions = np.full(len(generated_score), GENERATED_REDUNDANT, dtype=object)
    merge = text_similarity < thresholds.merge
    decisions[merge] = MERGE
    decisions[original_score < thresholds.original] = USE_GENERATED
    decisions[generated_score < thresholds.generated] = KEEP_ORIGINAL
    return decisions


def finetune_subset(segment_ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing round(fraction * n) segments, seeded (paper 000 Table II: 40 %).

    Chosen from a stream keyed on the seed and the sorted ids, so the subset depends on
    which segments exist, not on the order they were listed in.
    """
    order = sorted(segment_ids)
    key = zlib.crc32("\n".join(order).encode())
    rng = np.random.default_rng([seed, _FINETUNE_STREAM, key])
    count = round(fraction * len(order))
    chosen = set(rng.choice(len(order), size=count, replace=False).tolist())
    picked = {order[i] for i in chosen}
    return np.array([segment_id in picked for segment_id in segment_ids], dtype=bool)


@dataclass(frozen=True)
class CaptionRun:
    table: pd.DataFrame  # CAPTION_COLUMNS
    thresholds: RefinementThresholds
    few_shot_source: str  # where the {examples} pool came from
    captioner_gate: dict  # captioner_gate(): its coverage and whether originals were kept


def captioner_gate(coverage: dict, floor: float, backend: str) -> dict:
    """Whether refinement may replace captions: a captioner that cannot write most of the
    dataset's own caption words (tasks/common/health.py) would replace them with what it
    knows; below `captions.min_captioner_coverage` every original is kept instead."""
    if "coverage" not in coverage:
        reason = coverage.get("note", f"backends.captioner = {backend}: open vocabulary")
        return {"coverage": None, "floor": floor, "keeps_originals": False, "reason": reason}
    keeps = coverage["coverage"] < floor
    reason = (
        f"the captioner ({backend}) can write {coverage['coverage']:.0%} of the words of this "
        f"dataset's captions, below captions.min_captioner_coverage = {floor}: every original "
        "caption is kept (a captioner that knows this music, backends.captioner: transformers, "
        "or a lower captions.min_captioner_coverage lets refinement run)"
        if keeps
        else f"coverage {coverage['coverage']:.0%} >= captions.min_captioner_coverage = {floor}"
    )
    return {
        "coverage": coverage["coverage"],
        "floor": floor,
        "keeps_originals": keeps,
        "reason": reason,
    }
