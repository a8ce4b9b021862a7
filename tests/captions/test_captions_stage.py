"""The `captions` stage end to end on a tiny curated corpus (embedded backends)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tasks.captions import stage as captions
from tasks.captions.refinement import (
    DECISIONS,
    KEEP_ORIGINAL,
    MERGE,
    RefinementThresholds,
    decide,
)
from tasks.common.caption_text import forbidden_terms
from tasks.params import Params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def captioned(curated_workspace, tmp_path_factory) -> tuple[Path, Params, dict]:
    source, raw = curated_workspace
    root = tmp_path_factory.mktemp("captions")
    shutil.copytree(source, root, dirs_exist_ok=True)
    params = Params.from_mapping(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        summary = captions.run(params)
    return root, params, summary


def test_one_row_per_kept_segment_with_every_caption(captioned) -> None:
    root, _params, summary = captioned
    table = pd.read_parquet(root / captions.CAPTIONS)
    segments = pd.read_parquet(root / "data/curated/segments.parquet")
    assert list(table.columns) == list(captions.CAPTION_COLUMNS)
    assert sorted(table["segment_id"]) == sorted(segments.loc[segments["kept"], "segment_id"])
    for column in ("caption_generated", "caption_refined", "caption_inference"):
        assert table[column].str.strip().str.len().gt(0).all(), column
    assert set(table["refinement"]) <= set(DECISIONS)
    assert summary["segments"] == len(table)


def test_refinement_applies_the_recorded_thresholds(captioned) -> None:
    root, params, summary = captioned
    table = pd.read_parquet(root / captions.CAPTIONS)
    t = summary["thresholds"]
    thresholds = RefinementThresholds(t["generated"], t["original"], t["merge"], t["mode"])
    expected = decide(
        table["clap_generated"].to_numpy(),
        table["clap_original"].to_numpy(),
        table["text_similarity"].to_numpy(),
        thresholds,
    )
    assert list(table["refinement"]) == list(expected)
    original = params.captions.refine_column
    keep = table["refinement"] == KEEP_ORIGINAL
    assert (table.loc[keep, "caption_refined"] == table.loc[keep, original]).all()
    merged = table["refinement"] == MERGE
    assert table.loc[merged, "merge_backend"].notna().all()
    assert table.loc[~merged, "merge_backend"].isna().all()
    replaced = ~keep & ~merged
    assert (
        table.loc[replaced, "caption_refined"] == table.loc[replaced, "caption_generated"]
    ).all()


def test_inference_captions_are_concise_and_the_subset_is_train_only(captioned) -> None:
    root, params, _ = captioned
    table = pd.read_parquet(root / captions.CAPTIONS)
    leftovers = {c: forbidden_terms(c) for c in table["caption_inference"]}
    assert not {c: t for c, t in leftovers.items() if t}
    assert (table["rewrite_backend"] == "embedded").all() and table["rewrite_fallback"].isna().all()
    train = table["split"] == "train"
    assert not table.loc[~train, "finetune"].any()
    assert table.loc[train, "finetune"].sum() == round(
        params.captions.finetune_fraction * train.sum()
    )
    similarity = np.array([table["clap_refined"], table["clap_inference"]])
    assert np.isfinite(similarity).all() and (np.abs(similarity) <= 1.0 + 1e-5).all()


def test_reports_and_mlflow(captioned) -> None:
    root, params, summary = captioned
    report = json.loads((root / "reports/captions.json").read_text())
    assert report == json.loads(json.dumps(summary))
    accuracy = report["ground_truth"]["attributes"]
    assert {"original", "generated", "refined", "inference"} <= set(accuracy["all"])
    assert 0.0 <= accuracy["all"]["original"]["genre"] <= 1.0
    markdown = (root / "reports/captions.md").read_text()
    assert "## Ground truth" in markdown and "## Refinement" in markdown
    assert (root / "reports/captions/attributes.csv").exists()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=[params.tracking.experiment], filter_string="tags.stage = 'captions'"
    )
    assert len(runs) == 1 and runs.loc[0, "metrics.segments"] == summary["segments"]


def test_a_rerun_gives_the_same_table(captioned, monkeypatch) -> None:
    root, params, _ = captioned
    first = pd.read_parquet(root / captions.CAPTIONS)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    captions.run(params)
    pd.testing.assert_frame_equal(pd.read_parquet(root / captions.CAPTIONS), first)


def test_refinement_off_keeps_every_original_and_says_so(captioned, monkeypatch) -> None:
    """`captions.refine: false` (paper 003 §4.3 ablated): the refined caption is the original
    one everywhere, while the generated captions are still scored and recorded."""
    root, params, _ = captioned
    refined = pd.read_parquet(root / captions.CAPTIONS)
    off = params.model_copy(
        update={"captions": params.captions.model_copy(update={"refine": False})}
    )
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    try:
        summary = captions.run(off)
        table = pd.read_parquet(root / captions.CAPTIONS)
    finally:
        captions.run(params)  # the module's other tests read the refined table
    assert (refined["refinement"] != KEEP_ORIGINAL).any()  # refinement did replace some
    assert (table["refinement"] == KEEP_ORIGINAL).all()
    original = table[params.captions.refine_column]
    assert (table["caption_refined"] == original).all()
    pd.testing.assert_series_equal(table["caption_generated"], refined["caption_generated"])
    gate = summary["captioner_gate"]
    assert gate["keeps_originals"] and gate["reason"] == captions.REFINEMENT_OFF
