"""What the `captions` stage reports: refinement counts, CLAP similarity, attribute accuracy.

reports/captions.json holds the DVC metrics, reports/captions.md the same as prose and
tables, reports/captions/*.csv the tables. On the embedded corpus the ground truth asks
paper 003 §4.3's question directly: does the refined caption name the right genre,
instruments and mood more often than the original, above all where the original was
corrupted (`caption_noise` partial / wrong)?
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.captions.refinement import DECISIONS, CaptionRun
from tasks.common.atomic import write_json, write_text
from tasks.common.caption_text import mentions
from tasks.common.reporting import Report, json_safe, markdown_table, nested_records, value_counts
from tasks.params import Params

REPORT_JSON = Path("reports/captions.json")
REPORT_MD = Path("reports/captions.md")
TABLES = Path("reports/captions")
# caption kind -> column of the captions table, in pipeline order
KINDS = {
    "original": None,  # captions.refine_column
    "generated": "caption_generated",
    "refined": "caption_refined",
    "inference": "caption_inference",
}
GROUPS = ("all", "clean", "partial", "wrong")
CORRUPTED = ("partial", "wrong")  # the tracks whose recorded caption is (partly) wrong


# --------------------------------------------------------------------------- ground truth
def heard_instruments(sections_json: str, start_s: float, end_s: float) -> frozenset[str]:
    """Instruments of every section that overlaps the segment window."""
    heard: set[str] = set()
    for section in json.loads(sections_json):
        if section["start_s"] < end_s and section["end_s"] > start_s:
            heard |= set(section["instruments"])
    return frozenset(heard)


def truth_table(kept: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """Per kept segment: noise kind, true genre and mood, instruments heard in the window."""
    columns = ["track_id", "caption_noise", "genre", "mood", "sections"]
    merged = kept[["segment_id", "track_id", "start_s", "end_s"]].merge(
        tracks[columns], on="track_id", how="left", validate="many_to_one"
    )
    merged["heard"] = [
        heard_instruments(s, a, b) if isinstance(s, str) else frozenset()
        for s, a, b in zip(merged["sections"], merged["start_s"], merged["end_s"], strict=True)
    ]
    return merged.drop(columns=["sections"])


def attribute_scores(captions: list[str], truth: pd.DataFrame) -> pd.DataFrame:
    """Per caption: names the true genre (and no other), the true mood, instrument P / R."""
    rows = []
    for caption, genre, mood, heard in zip(
        captions, truth["genre"], truth["mood"], truth["heard"], strict=True
    ):
        named = mentions(caption)
        hits = len(named.instruments & heard)
        rows.append(
            {
                "genre": float(named.genres == {genre}),
                "mood": float(named.moods == {mood}),
                "instrument_precision": hits / len(named.instruments) if named.instruments else 0.0,
                "instrument_recall": hits / len(heard) if heard else np.nan,
            }
        )
    return pd.DataFrame(rows)


def accuracy_table(table: pd.DataFrame, truth: pd.DataFrame, original: str) -> pd.DataFrame:
    """Mean attribute scores per noise group x caption kind (the report's headline)."""
    rows = []
    for kind, column in KINDS.items():
        scores = attribute_scores(table[column or original].astype(str).tolist(), truth)
        for group in (*GROUPS, "corrupted"):
            mask = _group_mask(truth["caption_noise"], group)
            part = scores[mask]
            if len(part):
                rows.append(
                    {"group": group, "caption": kind, "segments": len(part)}
                    | dict(part.mean(skipna=True))
                )
    return pd.DataFrame(rows)


def _group_mask(noise: pd.Series, group: str) -> np.ndarray:
    if group == "all":
        return np.ones(len(noise), bool)
    return noise.isin(CORRUPTED if group == "corrupted" else (group,)).to_numpy()


def accuracy_verdict(attributes: pd.DataFrame) -> str:
    """One sentence: refined vs original on the corrupted captions, attribute by attribute."""
    rows = attributes[attributes["group"] == "corrupted"].set_index("caption")
    if not {"original", "refined"} <= set(rows.index):
        return ""
    metrics = ["genre", "mood", "instrument_precision", "instrument_recall"]
    deltas = ", ".join(
        f"{m} {rows.loc['original', m]:.3f} -> {rows.loc['refined', m]:.3f}" for m in metrics
    )
    return (
        f"On the {int(rows.loc['refined', 'segments'])} kept segments of corrupted tracks, "
        f"refined vs original caption: {deltas}. The refined caption is the captioner's "
        "wherever eq. (8)-(10) prefer it, so on every attribute it moves towards the "
        "captioner's own accuracy (the `generated` rows, clean group)."
    )


# --------------------------------------------------------------------------- tables
def similarity_table(table: pd.DataFrame, noise: pd.Series | None) -> pd.DataFrame:
    """Mean CLAP text-audio similarity of each caption kind, per noise group when known."""
    columns = {
        "original": "clap_original",
        "generated": "clap_generated",
        "refined": "clap_refined",
        "inference": "clap_inference",
    }
    groups = GROUPS if noise is not None else ("all",)
    rows = []
    for group in groups:
        mask = np.ones(len(table), bool) if group == "all" else np.asarray(noise == group)
        if mask.any():
            part = table[mask]
            rows.append(
                {"group": group, "segments": int(mask.sum())}
                | {kind: float(part[column].mean()) for kind, column in columns.items()}
            )
    return pd.DataFrame(rows)


def refinement_table(table: pd.DataFrame) -> pd.DataFrame:
    counts = pd.crosstab(table["split"], table["refinement"]).reindex(
        columns=list(DECISIONS), fill_value=0
    )
    counts.loc["all"] = counts.sum()
    return counts.reset_index().rename_axis(columns=None)


def fallback_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for step in ("merge", "rewrite"):
        reasons = table[f"{step}_fallback"].dropna()
        rows += [{"step": step, "reason": r, "count": n} for r, n in value_counts(reasons).items()]
    return pd.DataFrame(rows, columns=["step", "reason", "count"])


def examples_table(table: pd.DataFrame, noise: pd.Series | None, original: str) -> pd.DataFrame:
    """A few corrupted-caption segments through every step (one per refinement decision)."""
    pool = table if noise is None else table[np.asarray(noise != "clean")]
    picked = pool.groupby("refinement", sort=True).head(1)
    columns = ["segment_id", "refinement", original, "caption_generated", "caption_refined"]
    return picked[[*columns, "caption_inference"]].reset_index(drop=True)


# --------------------------------------------------------------------------- summary
def summarize(run: CaptionRun, tables: dict[str, pd.DataFrame], params: Params) -> dict:
    table = run.table
    llm = params.backends.rewriter.name
    summary = {
        "segments": len(table),
        "per_split": value_counts(table["split"]),
        "finetune_segments": int(table["finetune"].sum()),
        "finetune_share_of_train": float(table.loc[table["split"] == "train", "finetune"].mean()),
        "refinement_counts": value_counts(table["refinement"]),
        "refinement_shares": {d: float((table["refinement"] == d).mean()) for d in DECISIONS},
        "thresholds": run.thresholds.as_dict(),
        "captioner_gate": run.captioner_gate,
        "few_shot_source": run.few_shot_source,
        "rewriter": llm,
        "rewritten_by_selected_backend": int((table["rewrite_backend"] == llm).sum()),
        "rewrite_fallbacks": int(table["rewrite_fallback"].notna().sum()),
        "merge_fallbacks": int(table["merge_fallback"].notna().sum()),
        "caption_style_fallbacks": value_counts(table["caption_style_fallback"]),
        "clap": {
            kind: float(table[f"clap_{kind}"].mean())
            for kind in ("original", "generated", "refined", "inference")
        },
        "ground_truth": None,
    }
    if "attributes" in tables:
        summary["ground_truth"] = {
            "attributes": nested_records(tables["attributes"], ["group", "caption"]),
            "clap": nested_records(tables["similarity"], ["group"]),
        }
    return json_safe(summary)


def markdown(summary: dict, tables: dict[str, pd.DataFrame], params: Params) -> str:
    t = summary["thresholds"]
    original = params.captions.refine_column
    parts = [
        "# Captions (paper 003 §4.3 refinement, paper 000 §II-B two-stage captions)",
        f"{summary['segments']} kept segments; captioner `{params.backends.captioner.name}`, "
        f"rewriter `{summary['rewriter']}`; original caption = `{original}`.",
        "## Refinement",
        f"Thresholds ({t['mode']}): generated caption vs audio < {t['generated']:.4f} keeps the "
        f"original (eq. 8); original vs audio < {t['original']:.4f} discards it (eq. 9); "
        f"original vs generated text < {t['merge']:.4f} merges them (eq. 10), otherwise the "
        "generated caption replaces a redundant original. Captioner vocabulary check: "
        f"{summary['captioner_gate']['reason']}.",
        markdown_table(tables["refinement"]),
        "## Rewriting into the inference style",
        f"{summary['rewritten_by_selected_backend']} of {summary['segments']} inference-style "
        f"captions written by `{summary['rewriter']}`, {summary['rewrite_fallbacks']} fell "
        f"back to the embedded rewriter; {summary['merge_fallbacks']} merge fallbacks. "
        f"Few-shot examples from {summary['few_shot_source']}. Fine-tune subset: "
        f"{summary['finetune_segments']} train segments "
        f"({summary['finetune_share_of_train']:.3f} of train).",
        markdown_table(tables["fallbacks"]) if len(tables["fallbacks"]) else "",
        "## CLAP text-audio similarity, before and after",
        markdown_table(tables["similarity"]),
        style_fallback_line(summary["caption_style_fallbacks"]),
    ]
    if "attributes" not in tables:
        parts.append(
            "## Ground truth\n\nAttribute accuracy: not measurable on this data: no recorded "
            "genre or caption noise (an ingested corpus)."
        )
    if "attributes" in tables:
        parts += [
            "## Ground truth: attribute accuracy of the captions",
            "Genre / mood: the caption names exactly the true one. Instruments: precision "
            "and recall of the named instruments against those heard in the segment window.",
            markdown_table(tables["attributes"]),
            accuracy_verdict(tables["attributes"]),
            "Examples (corrupted captions, one per decision):",
            markdown_table(tables["examples"]),
        ]
    return "\n\n".join(p for p in parts if p) + "\n"


def style_fallback_line(counts: dict[str, int]) -> str:
    """Segments whose track lacked a caption style, and what stands in for it."""
    if not counts:
        return ""
    listed = ", ".join(f"{n} segments `{note}`" for note, n in counts.items())
    return f"## Missing caption styles\n\nFilled from the track's other style: {listed}."


def write_reports(
    run: CaptionRun, tracks: pd.DataFrame, kept: pd.DataFrame, params: Params
) -> Report:
    truth = truth_table(kept, tracks)
    known = truth["genre"].notna().all() and truth["caption_noise"].isin(GROUPS).all()
    noise = truth["caption_noise"] if known else None
    original = params.captions.refine_column
    table = run.table  # holds both original styles, so `original` is one of its columns
    tables = {
        "refinement": refinement_table(run.table),
        "similarity": similarity_table(run.table, noise),
        "fallbacks": fallback_table(run.table),
    }
    if known:
        tables["attributes"] = accuracy_table(table, truth, original)
        tables["examples"] = examples_table(table, noise, original)
    summary = summarize(run, tables, params)
    write_json(REPORT_JSON, summary)
    write_text(REPORT_MD, markdown(summary, tables, params))
    artifacts = [REPORT_JSON, REPORT_MD]
    for name, frame in tables.items():
        write_text(TABLES / f"{name}.csv", frame.to_csv(index=False))
        artifacts.append(TABLES / f"{name}.csv")
    return Report(summary, tables, artifacts)
