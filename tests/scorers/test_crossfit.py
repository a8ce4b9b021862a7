"""The cross-fitted CLAP: fold deal, out-of-fold training and scoring, the registry path."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from models.scorers import MelConfig, TinyClapConfig
from tasks.backends.clap import load_clap, pair_audio, pair_scores, pair_text, score_matrix
from tasks.backends.crossfit_clap import CrossfitClap, save_crossfit, standardised
from tasks.curate.stage import clap_scale_problems
from tasks.params import ClapChoice, ScorerOptim
from tasks.scorers import crossfit
from tasks.scorers.crossfit import CrossfitSettings, assign_folds, cross_fit, pair_captions
from tests.conftest import params_with

RATE = 16000
CONFIG = TinyClapConfig(MelConfig(sample_rate=RATE, n_mels=16, frame_rate=25), 8, 8, 384)
OPTIM = ScorerOptim(steps=3, batch_size=4, learning_rate=1e-3, weight_decay=0.0)


def _corpus(count: int) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """`count` noise tracks of 2-3 s; track 1 has no caption, track 2 only a dense one."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(count):
        words = f"track {i} with {['piano', 'drums', 'strings'][i % 3]} at {60 + 7 * i} bpm"
        rows.append(
            {
                "track_id": f"t{i:02d}",
                "caption_holistic": None if i in (1, 2) else f"holistic {words}",
                "caption_dense": None if i == 1 else f"dense {words}",
                "prompt_concise": None if i in (1, 2) else f"concise {words}",
            }
        )
    audio = [
        (0.1 * rng.standard_normal(int(RATE * rng.uniform(2.0, 3.0)))).astype(np.float32)
        for _ in range(count)
    ]
    return pd.DataFrame(rows), audio


def _encode(captions: list[str]) -> np.ndarray:
    """A stand-in sentence encoder: a fixed random unit vector per caption."""
    seeds = [int.from_bytes(hashlib.sha256(c.encode()).digest()[:4], "little") for c in captions]
    vectors = [np.random.default_rng(seed).standard_normal(384) for seed in seeds]
    out = np.array(vectors, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_folds_are_balanced_seeded_and_independent_of_row_order():
    ids = [f"t{i:02d}" for i in range(23)]
    folds = assign_folds(ids, 5, seed=7)
    assert set(np.bincount(list(folds.values()))) <= {4, 5}
    assert assign_folds(ids[::-1], 5, seed=7) == folds
    assert assign_folds(ids, 5, seed=8) != folds
    with pytest.raises(ValueError, match=r"backends\.clap\.folds = 5 needs at least 10"):
        assign_folds(ids[:9], 5, seed=7)


def test_preflight_names_the_keys(shipped_params):
    tracks, _ = _corpus(5)
    clap = {"name": "crossfit", "path": "artifacts/scorers/clap", "folds": 3}
    params = params_with(shipped_params, {"backends": {"clap": clap}})
    problems = " ".join(crossfit.crossfit_problems(tracks, params))
    assert "backends.clap.folds = 3 needs at least 6 tracks" in problems
    assert "backends.frame_teacher.path" in problems  # shared with the embedded teacher
    absolute = params_with(
        shipped_params, {"backends": {"clap": clap}, "curate": {"threshold_mode": "absolute"}}
    )
    assert "validation_quantile" in clap_scale_problems(absolute)[0]
    assert clap_scale_problems(params_with(shipped_params, {})) == []
    with pytest.raises(ValueError, match="folds"):
        params_with(shipped_params, {"backends": {"clap": {"folds": 1}}})


def test_a_missing_style_uses_another_and_captionless_tracks_are_not_trained_on():
    tracks, _ = _corpus(4)
    rows, captions = pair_captions(tracks)
    assert list(rows) == [0, 2, 3]
    assert captions[1] == [tracks.loc[2, "caption_dense"]] * 3
    assert (
        captions[0]
        == tracks.loc[0, ["caption_holistic", "caption_dense", "prompt_concise"]].tolist()
    )


def test_no_track_is_scored_by_a_model_trained_on_it(tmp_path, monkeypatch):
    tracks, audio = _corpus(10)
    ids = tracks["track_id"].tolist()
    trained: list[set[str]] = []
    real_train = crossfit.train_clap

    def spy(model, mels, captions, *args, **kwargs):
        owners = {id(m): t for m, t in zip(data_mels, ids, strict=True)}
        trained.append({owners[id(m)] for m in mels})
        return real_train(model, mels, captions, *args, **kwargs)

    real_fold_data = crossfit.fold_data

    def keep_mels(*args, **kwargs):
        data = real_fold_data(*args, **kwargs)
        data_mels[:] = data.mels
        return data

    data_mels: list = []
    monkeypatch.setattr(crossfit, "train_clap", spy)
    monkeypatch.setattr(crossfit, "fold_data", keep_mels)
    settings = CrossfitSettings(3, 5, OPTIM, 25, "caption_holistic")
    fitted = cross_fit(tracks, audio, CONFIG, _encode, settings, lambda *_: None)
    save_crossfit(fitted.models, fitted.fold_of, fitted.references, tmp_path / "cf", {})

    # through the registry, as curate loads it (real MiniLM for the text side)
    choice = ClapChoice(name="crossfit", path=str(tmp_path / "cf"), text_model_path=None, folds=3)
    clap = load_clap(choice)
    assert isinstance(clap, CrossfitClap) and clap.fold_of == fitted.fold_of
    trainable = {ids[i] for i in pair_captions(tracks)[0]}
    for fold, seen in enumerate(trained):
        held_out = {t for t in ids if clap.fold_of[t] == fold}
        assert seen.isdisjoint(held_out)  # model f never trained on fold f
        assert seen == trainable - held_out  # ... and on every other captioned track

    # curate's path: each window scored by its own track's fold model, standardised
    windows = [a[:RATE] for a in audio]
    captions = ["a caption"] * len(ids)
    features = pair_audio(clap)(windows, RATE)
    text = pair_text(clap, captions, 4)
    scores = pair_scores(clap, features, text, ids)
    for row, track in enumerate(ids):
        fold = clap.fold_of[track]
        member, reference = clap.members[fold], clap.references[fold]
        segment = member.embed_audio([windows[row]], RATE)[0]
        raw, typical = segment @ member.embed_text(captions[:1])[0], reference @ segment
        expected = (raw - typical.mean()) / typical.std()
        assert scores[row] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        other = clap.members[(fold + 1) % 3].embed_audio([windows[row]], RATE)[0]
        assert not np.allclose(other, features[row, fold * 8 : (fold + 1) * 8], atol=1e-3)
    assert np.allclose(np.diag(score_matrix(clap, features, text, ids)), scores)
    with pytest.raises(KeyError, match="dvc repro scorers"):
        pair_scores(clap, features[:1], text[:1], ["not-a-track"])
    # single-sided uses: the fold-0 model, unit norm, the width consumers are built for
    assert np.allclose(
        clap.embed_audio(windows[:2], RATE), clap.members[0].embed_audio(windows[:2], RATE)
    )
    assert clap.embedding_dim == 8


def test_each_fold_keeps_its_held_out_captions_as_the_reference():
    """A segment's score is standardised against its fold model's embeddings of the held-out
    fold's captions (label-free): those, and only those, are stored per fold."""
    tracks, audio = _corpus(9)
    settings = CrossfitSettings(3, 1, OPTIM, 25, "caption_dense")
    fitted = cross_fit(tracks, audio, CONFIG, _encode, settings, lambda *_: None)
    for fold, (model, reference) in enumerate(zip(fitted.models, fitted.references, strict=True)):
        rows = [i for i, t in enumerate(tracks["track_id"]) if fitted.fold_of[t] == fold]
        rows = [i for i in rows if isinstance(tracks.loc[i, "caption_dense"], str)]
        with torch.inference_mode():
            expected = model.embed_text(
                torch.from_numpy(_encode(list(tracks.loc[rows, "caption_dense"])))
            ).numpy()
        assert np.allclose(reference, expected, atol=1e-6)
    # standardised against its own references, every segment has mean 0 and std 1
    rng = np.random.default_rng(0)
    typical = rng.standard_normal((4, 6))
    z = standardised(typical, typical)
    assert np.allclose(z.mean(axis=1), 0.0) and np.allclose(z.std(axis=1), 1.0)
    with pytest.raises(FloatingPointError):
        standardised(typical, np.ones((4, 6)))


@pytest.mark.slow
def test_scorers_stage_trains_it_and_curate_scores_out_of_fold(
    shipped_params, tmp_path, monkeypatch
):
    """The real path: `python -m tasks.scorers` with backends.clap.name = crossfit, then
    curate's candidate scores, each from the model that never saw the candidate's track."""
    from tasks.common.audio_io import read_audio
    from tasks.common.score_cache import ScoreCache
    from tasks.corpus import stage as corpus
    from tasks.curate import stage as curate
    from tasks.scorers import stage as scorers
    from tests.conftest import TINY_DATA, TINY_SCORERS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    overlay = {
        "data": {**TINY_DATA, "root": "corpus"},
        "scorers": TINY_SCORERS,
        "curate": {"candidates_per_track": 3, "segment_seconds": 4.0, "keep_per_track": 2},
        "backends": {"clap": {"name": "crossfit", "path": "cf", "folds": 3}},
    }
    params = params_with(shipped_params, overlay)
    built = corpus.build_corpus(params.data, params.seed, 4.0, tmp_path / "corpus")
    corpus.write_corpus(built, tmp_path / "corpus")
    monkeypatch.setattr(scorers, "load_stage_params", lambda: params)
    scorers.main()

    clap = load_clap(params.backends.clap)
    assert isinstance(clap, CrossfitClap) and len(clap.members) == 3
    assert set(clap.fold_of) == set(built.tracks["track_id"])  # every split has a fold
    reach = json.loads((tmp_path / "reports/scorers.json").read_text())["clap"]
    assert 0.0 <= reach["auc_shuffled"] <= 1.0

    tracks = built.tracks
    with ScoreCache(tmp_path / "cache") as cache:
        candidates, _ = curate.clap_scores(
            tracks, tmp_path / "corpus", params, curate.load_scorers(params, cache)
        )
    rate = params.data.sample_rate
    for row in candidates.dropna(subset=["clap_score"]).head(6).itertuples():
        track = tracks.set_index("track_id").loc[row.track_id]
        audio = read_audio(tmp_path / "corpus" / track.audio_path, rate)
        window = audio[round(row.start_s * rate) : round(row.end_s * rate)]
        fold = clap.fold_of[row.track_id]
        member, reference = clap.members[fold], clap.references[fold]
        segment = member.embed_audio([window], rate)[0]
        raw = segment @ member.embed_text([track.caption_holistic])[0]
        typical = reference @ segment
        expected = (raw - typical.mean()) / typical.std()
        assert row.clap_score == pytest.approx(expected, rel=1e-3, abs=1e-3)
