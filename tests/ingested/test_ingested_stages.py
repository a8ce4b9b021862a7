"""An ingested dataset without ground truth through scorers' pre-flight, curate, captions and
latents: no recorded quality levels, no caption noise, a caption style missing on some tracks.

Audio + an ATTM-style JSON (holistic) and a CSV (dense) built the way tests/corpus/test_ingest.py
builds them; the scorers are the random embedded ones of the curated fixture (mechanics, not
reach)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from tasks.captions import stage as captions
from tasks.captions.stage import fill_missing_styles
from tasks.common.preflight import (
    PreflightError,
    calibration_problems,
    caption_column_problems,
    caption_table_problems,
    evaluation_prompt_problems,
)
from tasks.common.tracking import stage_run
from tasks.corpus import stage as corpus
from tasks.curate import stage as curate
from tasks.evaluate import stage as evaluate
from tasks.latents import stage as latents
from tasks.params import Params, merge
from tasks.scorers import stage as scorers
from tasks.train import stage as training
from tests.conftest import (
    CURATED_OVERLAY,
    TINY_DATA,
    TINY_SCORERS,
    TINY_TRAINING,
    inside_workspace,
)
from tests.corpus.test_ingest import source
from tests.curate.test_curate import save_random_scorers

RATE = 16000
TRACKS = [f"{folder}/{1000 + i}.wav" for i, folder in enumerate(["00"] * 5 + ["01"] * 5)]
NO_HOLISTIC = set(TRACKS[8:])  # only a dense caption: curate rejects them (caption_column)
NO_DENSE = set(TRACKS[4:8])  # only a holistic caption: captions fills dense from it
INGESTED_DATA = {
    **TINY_DATA,
    "source": "ingest",
    "root": "corpus",
    "val_fraction": 0.25,
    "test_fraction": 0.3,
}
# The tiny training run on 4-s segments: the model generates 4 s, so the 6-s test tracks
# serve as its reference; the fine-tune subset of 5 train tracks holds a few segments only.
INGESTED_TRAINING = {"model": {"latent_seq_len": 100}, "finetune": {"optim": {"batch_size": 2}}}


def melody(index: int, seconds: float = 6.0) -> np.ndarray:
    """A distinct two-note figure per track with a little noise (never silent)."""
    rng = np.random.default_rng(index)
    t = np.arange(round(seconds * RATE)) / RATE
    pitch = 220.0 * 2 ** (index / 12) * np.where((t * 2).astype(int) % 2, 1.5, 1.0)
    return 0.3 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(t.size)


def build_dataset(base: Path) -> tuple[Path, list[dict]]:
    root = base / "music"
    for index, rel in enumerate(TRACKS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, melody(index), RATE)
    holistic = [{"path": p, "caption": f"a calm piece number {i}"} for i, p in enumerate(TRACKS)]
    holistic_file = base / "holistic.json"
    holistic_file.write_text(json.dumps([c for c in holistic if c["path"] not in NO_HOLISTIC]))
    dense = [(p, f"dense caption {i}, 120 BPM") for i, p in enumerate(TRACKS) if p not in NO_DENSE]
    dense_file = base / "dense.csv"
    dense_file.write_text("audio,text\n" + "".join(f"{p},{c}\n" for p, c in dense))
    sources = [source(holistic_file, "holistic"), source(dense_file, "dense", "audio", "text")]
    return root, sources


def ingested_raw(shipped: dict, base: Path, overlay: dict | None = None) -> dict:
    """Raw params of an ingested workspace under `base` with random embedded scorers."""
    root, sources = build_dataset(base / "dataset")
    tiny = merge(shipped, {"data": TINY_DATA, "scorers": TINY_SCORERS})
    clap_dir, quality_dir = save_random_scorers(Params.from_mapping(tiny), base / "scorers")
    backends = {
        "clap": {"name": "embedded", "path": str(clap_dir), "text_model_path": None},
        "quality": {"name": "embedded", "path": str(quality_dir)},
        "frame_teacher": {"name": "embedded", "path": str(clap_dir)},
    }
    ingest = {"audio_root": str(root), "caption_root": str(root.parent), "caption_sources": sources}
    data = {**INGESTED_DATA, "ingest": ingest}
    raw = merge(tiny, {**CURATED_OVERLAY, "data": data, "backends": backends})
    raw = merge(merge(raw, TINY_TRAINING), INGESTED_TRAINING)
    return merge(raw, overlay or {})


def write_corpus(raw: dict, base: Path) -> Params:
    params = Params.from_mapping(raw)
    built = corpus.build_corpus(params.data, params.seed, 4.0, base / "corpus")
    corpus.write_corpus(built, base / "corpus")
    (base / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return params


@pytest.fixture(scope="module")
def workspace(shipped_params, tmp_path_factory) -> tuple[Path, Params, dict]:
    """(folder, params, what each stage returned) after corpus, curate, captions, latents,
    pretrain, finetune and evaluate."""
    base = tmp_path_factory.mktemp("ingested")
    params = write_corpus(ingested_raw(shipped_params, base), base)
    with inside_workspace(base):
        results = {
            "curate": curate.run(params),
            "captions": captions.run(params),
            "latents": latents.run(params),
            "pretrain": training.run(params, "pretrain"),
            "finetune": training.run(params, "finetune"),
        }
        with stage_run(params, "evaluate"):
            results["evaluate"] = evaluate.write_reports(evaluate.run(params), params)
    return base, params, results


def origin(base: Path) -> pd.Series:
    """track_id -> path as written in the caption files."""
    tracks = pd.read_parquet(base / "corpus/tracks.parquet")
    return tracks.set_index("track_id")["origin_path"]


def test_the_corpus_has_no_ground_truth(workspace) -> None:
    tracks = pd.read_parquet(workspace[0] / "corpus/tracks.parquet")
    assert len(tracks) == len(TRACKS)
    assert tracks["quality_level"].isna().all()
    assert set(tracks["caption_noise"]) == {"unknown"}
    val = tracks[tracks["split"] == "val"]
    assert val["caption_holistic"].notna().any()  # quantile calibration has its val scores


def test_curate_rejects_tracks_without_the_scored_style(workspace) -> None:
    base, _, results = workspace
    rejects = pd.read_parquet(base / "data/curated/rejects.parquet")
    paths = origin(base)
    assert {paths[t] for t in rejects["track_id"]} == NO_HOLISTIC
    assert set(rejects["reason"]) == {"missing_caption"}
    assert results["curate"]["kept"] > 0


def test_curation_report_says_what_is_not_measurable(workspace) -> None:
    base = workspace[0]
    summary = json.loads((base / "reports/curation.json").read_text())
    assert summary["level_accuracy"] is None
    assert summary["ground_truth"] is None
    reasons = summary["not_measurable"]
    assert "no kept segment's track has a recorded quality level" in reasons["level_accuracy"]
    assert "no recorded caption noise" in reasons["ground_truth"]
    text = (base / "reports/curation.md").read_text()
    health, body = text.split("## Tiers")
    assert body.count("not measurable on this data") == 2
    # 2 captioned val tracks: too few for the CLAP and p-MOS health figures, and it says so
    assert "- CLAP: not measurable on this data: 2 val track(s) with a caption" in health
    assert "- p-MOS: not measurable on this data: 2 scorable val track(s)" in health
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_kept_tracks_without_a_dense_caption_use_their_holistic_one(workspace) -> None:
    base = workspace[0]
    table = pd.read_parquet(base / "data/captions/captions.parquet")
    paths = origin(base)
    filled = table["track_id"].map(paths).isin(NO_DENSE).to_numpy()
    assert filled.any() and (~filled).any()
    assert (
        table.loc[filled, "caption_style_fallback"] == "caption_dense from caption_holistic"
    ).all()
    assert table.loc[~filled, "caption_style_fallback"].isna().all()
    assert (table.loc[filled, "caption_dense"] == table.loc[filled, "caption_holistic"]).all()
    summary = json.loads((base / "reports/captions.json").read_text())
    assert summary["caption_style_fallbacks"] == {
        "caption_dense from caption_holistic": int(filled.sum())
    }
    text = (base / "reports/captions.md").read_text()
    assert "## Missing caption styles" in text
    assert "Attribute accuracy: not measurable on this data" in text


def test_latents_encode_every_kept_segment(workspace) -> None:
    base, _, results = workspace
    table = pd.read_parquet(base / "data/latents/segments.parquet")
    assert results["latents"]["segments"] == len(table) == results["curate"]["kept"]


def test_evaluation_says_attribute_accuracies_are_not_measurable(workspace) -> None:
    base, _, results = workspace
    reasons = results["evaluate"]["not_measurable"]
    assert set(reasons) == {f"{a}_accuracy" for a in ("genre", "instruments", "tempo", "mode")}
    assert reasons["genre_accuracy"] == "not measurable on this data: no prompt states a genre"
    assert results["evaluate"]["prompts"] == 3
    assert np.isfinite(results["evaluate"]["generated"]["fad_clap"]["value"])
    text = (base / "reports/evaluation.md").read_text()
    assert "genre_accuracy: not measurable on this data: no prompt states a genre." in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_health_checks_lead_the_curation_report(workspace) -> None:
    """Label-free figures on the ingested val tracks, with no ground truth to use."""
    base = workspace[0]
    health = json.loads((base / "reports/curation.json").read_text())["health"]
    assert set(health) == {"clap", "quality", "captioner"}
    vocabulary = health["captioner"]["vocabulary"]
    # "a calm piece number i": the embedded captioner writes "calm" and "piece", not "number"
    assert vocabulary["coverage"] == pytest.approx(2 / 3) and vocabulary["top_uncovered"] == [
        "number"
    ]
    page = (base / "reports/curation.md").read_text()
    assert page.split("\n\n")[1] == "## Scorer health on this data (label-free)"
    gate = json.loads((base / "reports/captions.json").read_text())["captioner_gate"]
    assert gate["coverage"] == pytest.approx(2 / 3) and not gate["keeps_originals"]


def test_refinement_keeps_the_originals_when_the_captioner_cannot_write_them(
    workspace, tmp_path
) -> None:
    base, params, _ = workspace
    shutil.copytree(base, tmp_path / "copy")
    strict = params.model_copy(
        update={"captions": params.captions.model_copy(update={"min_captioner_coverage": 0.9})}
    )
    with inside_workspace(tmp_path / "copy"):
        summary = captions.run(strict)
    assert summary["captioner_gate"]["keeps_originals"]
    assert "below captions.min_captioner_coverage = 0.9" in summary["captioner_gate"]["reason"]
    table = pd.read_parquet(tmp_path / "copy/data/captions/captions.parquet")
    assert (table["refinement"] == "original_kept").all()
    assert (table["caption_refined"] == table["caption_holistic"]).all()


def test_curate_refuses_a_clap_that_does_not_know_the_music(
    shipped_params, tmp_path, monkeypatch
) -> None:
    overlay = {"curate": {"min_clap_auc": 1.0}, "data": {"val_fraction": 0.45}}
    params = write_corpus(ingested_raw(shipped_params, tmp_path, overlay), tmp_path)

    def curation_started(*_args: object) -> None:
        raise AssertionError("curate scored the corpus before its CLAP gate")

    monkeypatch.setattr(curate, "curate_segments", curation_started)
    with inside_workspace(tmp_path), pytest.raises(PreflightError) as raised:
        curate.run(params)
    message = str(raised.value)
    assert "curate.min_clap_auc = 1.0, and the CLAP (backends.clap.name = embedded)" in message
    assert "(0.5 = chance" in message and "backends.clap.name: crossfit" in message
    runs = mlflow.search_runs(experiment_names=[params.tracking.experiment])
    assert runs.loc[0, "status"] == "FAILED" and "metrics.health.clap.auc.value" in runs


# --------------------------------------------------------------------------- pre-flight
def test_scorers_refuse_recorded_quality_targets_before_training(
    shipped_params, tmp_path, monkeypatch
) -> None:
    """`scorers.quality_targets: recorded` needs recorded levels (the default, auto, learns
    synthetic degradations of the dataset's own clips instead: tests/scorers)."""
    overlay = {"scorers": {"quality_targets": "recorded"}}
    write_corpus(ingested_raw(shipped_params, tmp_path, overlay), tmp_path)

    def training_started(*_args: object) -> None:
        raise AssertionError("the scorers stage started training before its pre-flight")

    monkeypatch.setattr(scorers, "pretraining_pairs", training_started)
    started = time.perf_counter()
    with inside_workspace(tmp_path), pytest.raises(PreflightError) as raised:
        scorers.main()
    message = str(raised.value)
    assert "scorers.quality_targets = recorded" in message
    assert "scorers.quality_targets: synthetic_degradations" in message
    assert "backends.quality.name: pmos" in message
    assert f"{len(TRACKS) - 5} of {len(TRACKS) - 5} train tracks" in message
    assert time.perf_counter() - started < 10.0
    assert not (tmp_path / "artifacts").exists()


def test_curate_refuses_a_caption_style_no_source_provides(
    shipped_params, tmp_path, monkeypatch
) -> None:
    overlay = {"curate": {"caption_column": "prompt_concise"}}
    params = write_corpus(ingested_raw(shipped_params, tmp_path, overlay), tmp_path)

    def scoring_started(*_args: object) -> None:
        raise AssertionError("curate loaded its scorers before its pre-flight")

    monkeypatch.setattr(curate, "load_scorers", scoring_started)
    with inside_workspace(tmp_path), pytest.raises(PreflightError) as raised:
        curate.run(params)
    message = str(raised.value)
    assert "curate.caption_column = prompt_concise" in message
    assert "['caption_holistic', 'caption_dense']" in message
    assert "curate.threshold_mode = validation_quantile" in message


def test_caption_column_and_calibration_checks(tiny_params) -> None:
    tracks = pd.DataFrame(
        {
            "split": ["train", "val", "val"],
            "caption_holistic": ["a", pd.NA, "  "],
            "caption_dense": ["b", "c", pd.NA],
            "prompt_concise": [pd.NA, pd.NA, pd.NA],
        }
    )
    assert caption_column_problems(tracks, "caption_dense", "captions.refine_column") == []
    (problem,) = caption_column_problems(tracks, "prompt_concise", "curate.caption_column")
    assert problem.startswith("curate.caption_column = prompt_concise")
    (problem,) = evaluation_prompt_problems(2, tiny_params)
    assert (
        problem.startswith("evaluate has 2 prompt(s)") and "evaluate.fad_infinity: false" in problem
    )
    assert evaluation_prompt_problems(3, tiny_params) == []
    # holistic exists on train only: quantile thresholds have no val score to calibrate on
    (problem,) = calibration_problems(tracks, tiny_params)
    assert "0 of this corpus's 2 val track(s) have a caption_holistic" in problem
    absolute = tiny_params.model_copy(
        update={"curate": tiny_params.curate.model_copy(update={"threshold_mode": "absolute"})}
    )
    assert calibration_problems(tracks, absolute) == []


def test_caption_table_check_names_column_and_segments() -> None:
    table = pd.DataFrame(
        {"segment_id": ["s1", "s2"], "caption_refined": ["x", pd.NA], "caption_dense": ["y", "z"]}
    )
    (problem,) = caption_table_problems(
        table, ["caption_refined", "caption_dense"], "captions.parquet"
    )
    assert problem.startswith("1 segment(s) of captions.parquet have no caption_refined (e.g. s2)")
    assert caption_table_problems(table, ["caption_inference"], "captions.parquet") == [
        "captions.parquet has no column caption_inference"
    ]


def test_missing_styles_take_the_other_style_then_the_concise_prompt() -> None:
    kept = pd.DataFrame(
        {
            "track_id": ["a", "b", "c", "d"],
            "caption_holistic": ["h", pd.NA, pd.NA, "h4"],
            "caption_dense": [pd.NA, "d", pd.NA, "d4"],
            "prompt_concise": [pd.NA, pd.NA, "p", pd.NA],
        },
        dtype="string",
    )
    out = fill_missing_styles(kept)
    assert out["caption_holistic"].tolist() == ["h", "d", "p", "h4"]
    assert out["caption_dense"].tolist() == ["h", "d", "p", "d4"]
    assert out["caption_style_fallback"].tolist()[:3] == [
        "caption_dense from caption_holistic",
        "caption_holistic from caption_dense",
        "caption_holistic from prompt_concise and caption_dense from prompt_concise",
    ]
    assert pd.isna(out["caption_style_fallback"].iloc[3])
    assert "prompt_concise" not in out
    with pytest.raises(ValueError, match=r"tracks \['e'\] have no caption of any style"):
        fill_missing_styles(
            pd.DataFrame(
                {
                    "track_id": ["e"],
                    "caption_holistic": [pd.NA],
                    "caption_dense": [pd.NA],
                    "prompt_concise": [pd.NA],
                },
                dtype="string",
            )
        )
