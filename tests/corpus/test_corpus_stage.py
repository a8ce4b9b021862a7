"""The `corpus` stage end to end on a tiny corpus: files, schema, noise, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from tasks.common import schema
from tasks.common.atomic import atomic_directory
from tasks.corpus import stage as corpus
from tasks.synthesis import plan
from tasks.synthesis.arrangement import render
from tasks.synthesis.captions import instruments_of
from tasks.synthesis.degradation import snr_db
from tasks.synthesis.vocabulary import GENRES, INSTRUMENT_WORDS, MOOD_WORDS
from tests.conftest import TINY_DATA, params_with


@pytest.fixture(scope="module")
def built(tiny_params, tmp_path_factory) -> tuple[corpus.Corpus, Path]:
    root = tmp_path_factory.mktemp("corpus")
    result = corpus.build_corpus(tiny_params.data, tiny_params.seed, 10.0, root)
    corpus.write_corpus(result, root)
    return result, root


def _mentions(text: str, phrases) -> bool:
    return any(re.search(rf"\b{re.escape(p)}\b", text, flags=re.IGNORECASE) for p in phrases)


def test_tables_have_the_schema_and_files_exist(built, tiny_params):
    _result, root = built
    tracks = pd.read_parquet(root / "tracks.parquet")
    schema.check_columns(tracks, schema.TRACK_COLUMNS, "tracks")
    assert len(tracks) == tiny_params.data.num_tracks
    assert set(tracks["split"]) == {"train", "val", "test"}
    for row in tracks.itertuples():
        info = sf.info(root / row.audio_path)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert abs(info.duration - row.duration_s) < 1e-3
        assert tiny_params.data.min_track_seconds - 1e-6 <= row.duration_s
        assert row.duration_s <= tiny_params.data.max_track_seconds + 1e-6
        sections = json.loads(row.sections)
        assert 1 <= len(sections) <= 4  # 8-12 s tracks fit fewer sections at slow tempi
        assert abs(sections[-1]["end_s"] - row.duration_s) < 0.01
    assert len(pd.read_parquet(root / "rejects.parquet")) == 0


def test_noise_is_planned_as_configured_and_test_split_is_clean(built, tiny_params):
    tracks = built[0].tracks
    noisy = tracks[tracks["split"] != "test"]
    noise = tiny_params.data.noise
    counts = noisy["caption_noise"].value_counts()
    assert counts.get("wrong", 0) == round(noise.wrong_caption_fraction * len(noisy))
    assert counts.get("partial", 0) == round(noise.partial_caption_fraction * len(noisy))
    assert (noisy["quality_level"] < 5).sum() == round(noise.degraded_fraction * len(noisy))
    test = tracks[tracks["split"] == "test"]
    assert (test["caption_noise"] == "clean").all() and (test["quality_level"] == 5).all()
    assert ((tracks["quality_level"] == 5) == (tracks["degradation"] == "none")).all()


def test_clean_captions_state_the_true_attributes(built):
    tracks = built[0].tracks
    for row in tracks[tracks["caption_noise"] == "clean"].itertuples():
        assert _mentions(row.caption_holistic, GENRES[row.genre].words)
        assert _mentions(row.prompt_concise, GENRES[row.genre].words)
        assert _mentions(row.caption_holistic, MOOD_WORDS[row.mood])
        for instrument in row.instruments:
            assert _mentions(row.caption_holistic, INSTRUMENT_WORDS[instrument]), instrument
        # paper 000 §II-B: the dense style carries tempo, key and time signature
        assert f"{row.tempo_bpm:.0f} BPM" in row.caption_dense
        assert f"{row.key} {row.mode}" in row.caption_dense
        assert row.time_signature in row.caption_dense


def test_corrupted_captions_disagree_with_the_attributes(built):
    tracks = built[0].tracks
    corrupted = tracks[tracks["caption_noise"] != "clean"]
    assert {"wrong", "partial"} <= set(corrupted["caption_noise"])
    for row in corrupted.itertuples():
        claims = json.loads(row.caption_claims)
        if row.caption_noise == "wrong":
            assert row.caption_source_track != row.track_id
            assert claims["genre"] != row.genre
            assert not _mentions(row.caption_holistic, GENRES[row.genre].words)
            continue
        attribute = row.corrupted_attribute
        if attribute == "genre":
            assert claims["genre"] != row.genre
            assert _mentions(row.caption_holistic, GENRES[claims["genre"]].words)
            assert not _mentions(row.caption_holistic, GENRES[row.genre].words)
        elif attribute == "mood":
            assert claims["mood"] != row.mood
            assert _mentions(row.caption_holistic, MOOD_WORDS[claims["mood"]])
            assert not _mentions(row.caption_holistic, MOOD_WORDS[row.mood])
        elif attribute == "tempo":
            assert abs(claims["tempo_bpm"] - row.tempo_bpm) / row.tempo_bpm >= 0.3
            assert f"{claims['tempo_bpm']:.0f} BPM" in row.caption_dense
            assert f"{row.tempo_bpm:.0f} BPM" not in row.caption_dense
        elif attribute == "key":
            assert (claims["key"], claims["mode"]) != (row.key, row.mode)
            assert f"{claims['key']} {claims['mode']}" in row.caption_dense
            assert f"{row.key} {row.mode}" not in row.caption_dense
        else:
            assert attribute == "instrument"
            extra = set(instruments_of(claims)) - set(row.instruments)
            assert len(extra) == 1
            assert _mentions(row.caption_holistic, INSTRUMENT_WORDS[extra.pop()])


def test_caption_wording_varies(built):
    tracks = built[0].tracks
    for column in ("caption_holistic", "caption_dense", "prompt_concise"):
        openings = {" ".join(text.split()[:2]) for text in tracks[column]}
        assert len(openings) >= 3, (column, openings)
    assert tracks["prompt_concise"].nunique() >= 0.8 * len(tracks)


def test_degraded_tracks_have_lower_snr_than_clean_ones(built, tiny_params):
    """Re-render each track clean from its spec and compare with the stored file."""
    result, root = built
    specs = {s.track_id: s for s in plan.sample_specs(tiny_params.data, tiny_params.seed)}
    snr: dict[str, list[float]] = {"clean": [], "degraded": []}
    for row in result.tracks.itertuples():
        stored, _ = sf.read(root / row.audio_path, dtype="float32")
        clean = render(specs[row.track_id], 16000)
        group = "clean" if row.quality_level == 5 else "degraded"
        snr[group].append(snr_db(clean, stored))
    assert min(snr["clean"]) > 60.0  # only the 16-bit FLAC quantisation
    assert max(snr["degraded"]) < 40.0


def test_eval_prompts_come_from_test_tracks(built, tiny_params):
    result, _ = built
    prompts = result.eval_prompts
    schema.check_columns(prompts, schema.EVAL_PROMPT_COLUMNS, "eval_prompts")
    assert len(prompts) == tiny_params.data.eval_prompt_count
    test_ids = set(result.tracks.loc[result.tracks["split"] == "test", "track_id"])
    assert set(prompts["track_id"]) <= test_ids
    truth = result.tracks.set_index("track_id")
    for row in prompts.itertuples():
        assert row.genre == truth.loc[row.track_id, "genre"]
        assert _mentions(row.prompt, GENRES[row.genre].words)


def test_build_is_deterministic_whatever_the_worker_count(built, shipped_params, tmp_path):
    result, root = built
    params = params_with(shipped_params, {"data": {**TINY_DATA, "workers": 2}})
    again = corpus.build_corpus(params.data, params.seed, 10.0, tmp_path)
    pd.testing.assert_frame_equal(again.tracks, result.tracks)
    pd.testing.assert_frame_equal(again.eval_prompts, result.eval_prompts)
    for path in sorted((root / "audio").glob("*.flac")):
        assert _digest(path) == _digest(tmp_path / "audio" / path.name)


def test_main_writes_atomically_and_logs_to_mlflow(shipped_params, tmp_path, monkeypatch):
    """Run the stage's main() in a scratch directory: outputs, report, one MLflow run."""
    raw = dict(shipped_params)
    raw = {**raw, "data": {**raw["data"], **TINY_DATA, "num_tracks": 8, "eval_prompt_count": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    stale = tmp_path / "data" / "corpus"
    stale.mkdir(parents=True)
    (stale / "stale.txt").write_text("left from an older run")
    corpus.main()
    written = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert written == ["corpus"]  # no temporary directory left behind
    assert not (stale / "stale.txt").exists()
    report = json.loads((tmp_path / "reports" / "corpus.json").read_text())
    assert report["tracks"] == 8 and report["splits"]["test"] >= 1
    runs = mlflow.search_runs(experiment_names=[raw["tracking"]["experiment"]])
    assert len(runs) == 1 and runs.loc[0, "metrics.tracks"] == 8
    assert runs.loc[0, "params.data.num_tracks"] == "8"


def test_failed_build_leaves_previous_output_untouched(tiny_params, tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "tracks.parquet").write_text("previous")

    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(corpus, "ordered_map", explode)
    with pytest.raises(RuntimeError), atomic_directory(root) as staging:
        corpus.build_corpus(tiny_params.data, tiny_params.seed, 10.0, staging)
    assert (root / "tracks.parquet").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def _digest(path: Path) -> str:
    return hashlib.sha256(np.ascontiguousarray(sf.read(path)[0]).tobytes()).hexdigest()
