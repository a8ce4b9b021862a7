"""A "foreign" dataset through all eight stages with `dvc repro`, the embedded profile shrunk to
seconds: what a new user with their own music gets (issue 19, README "Real data").

The test writes the dataset into the scratch repo's inbox/ (the shipped `data.ingest`
defaults): tracks rendered to mp3, ogg and wav in nested folders, an ATTM-style JSON with the
holistic captions (missing on some tracks) and a CSV with the dense ones (missing on others),
and bad inputs (corrupt, silent, too short, captioned but absent, uncaptioned). Nothing
records a quality level or caption noise, so the embedded p-MOS regressor learns synthetic
degradations (`scorers.quality_targets: auto`) and every figure needing ground truth says it
is not measurable. Then DVC's view of the inbox: editing a caption file or adding audio
makes `corpus`, and only `corpus`, stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tasks.params import merge, read_yaml
from tests import scratch_repo
from tests.conftest import REPO
from tests.scratch_repo import run

pytestmark = pytest.mark.slow

RATE = 22050  # not the corpus rate: ingest resamples
# relative path under the audio root -> soundfile options; all decodable and long enough
GOOD = {
    "artist_a/album_1/01.mp3": {"format": "MP3"},
    "artist_a/album_1/02.ogg": {"format": "OGG", "subtype": "VORBIS"},
    "artist_a/album_2/03.wav": {},
    "artist_a/album_2/04.mp3": {"format": "MP3"},
    "artist_b/05.ogg": {"format": "OGG", "subtype": "VORBIS"},
    "artist_b/06.wav": {},
    "artist_b/live/07.mp3": {"format": "MP3"},
    "artist_b/live/08.wav": {},
    "artist_c/09.ogg": {"format": "OGG", "subtype": "VORBIS"},
    "artist_c/10.wav": {},
}
NO_HOLISTIC = {"artist_c/09.ogg", "artist_c/10.wav"}  # dense only: curate rejects them
NO_DENSE = {"artist_a/album_1/02.ogg", "artist_b/05.ogg", "artist_b/live/08.wav"}
BAD = {  # path as captioned / found -> the reason ingest gives
    "artist_a/corrupt.mp3": "undecodable",
    "artist_b/silence.wav": "silent",
    "artist_b/short.wav": "too_short",
    "artist_c/absent.wav": "missing_audio",
    "artist_c/uncaptioned.wav": "no_caption",
}
# Sizes for ten tracks: 3 test tracks (evaluation prompts), 3 val (the health checks'
# minimum, all captioned at this seed), 4 train.
INGESTED = {
    "data": {
        "source": "ingest",
        "val_fraction": 0.3,
        "test_fraction": 0.3,
        "eval_prompt_count": 3,
        "workers": 1,
        "ingest": {
            "caption_sources": [
                {
                    "file": "holistic.json",  # in data.ingest.caption_root: inbox/captions
                    "style": "holistic",
                    "path_column": "path",
                    "caption_column": "caption",
                },
                {
                    "file": "dense.csv",
                    "style": "dense",
                    "path_column": "audio",
                    "caption_column": "text",
                },
            ]
        },
    },
    "curate": {"candidates_per_track": 6, "keep_per_track": 3},
    # 4-s segments: the model generates 4 s, and the 6-s test tracks are its reference
    "model": {"latent_seq_len": 100},
    # Fewer validations, checkpoints and Griffin-Lim iterations than the tiny DAG: this test
    # checks what the stages say about the data, not the training curves or the audio.
    "latents": {"mel25": {"griffin_lim_iters": 4}},
    "train": {"optim": {"eval_every": 12, "checkpoint_every": 12}},
    "finetune": {"optim": {"batch_size": 2, "eval_every": 4, "checkpoint_every": 4}},
    "evaluate": {"reference_windows": 1},
}
# The scorers' health-check gates lowered for a ten-track set: a CLAP trained for seconds on 4
# tracks knows nothing (the gate would rightly refuse), and 3 val tracks calibrate the tiers.
# The captioner's coverage gate stays as shipped: refinement keeps the originals below it.
HEALTH_GATES = {"curate": {"min_clap_auc": 0.0, "min_calibration_tracks": 3}}


def figure(index: int, seconds: float = 6.0) -> np.ndarray:
    """A distinct two-note figure with overtones per track, stereo (ingest mixes to mono)."""
    rng = np.random.default_rng(index)
    t = np.arange(round(seconds * RATE)) / RATE
    pitch = 196.0 * 2 ** (index / 12) * np.where((t * 2).astype(int) % 2, 1.5, 1.0)
    mono = sum(0.25 / k * np.sin(2 * np.pi * k * pitch * t) for k in (1, 2, 3))
    mono = mono + 0.01 * rng.standard_normal(t.size)
    return np.stack([mono, 0.8 * mono], axis=1)


def write_dataset(inbox: Path) -> None:
    audio, captions = inbox / "audio", inbox / "captions"
    for index, (rel, options) in enumerate(GOOD.items()):
        (audio / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(audio / rel, figure(index), RATE, **options)
    (audio / "artist_a/corrupt.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(audio / "artist_b/silence.wav", np.zeros(6 * RATE), RATE)
    sf.write(audio / "artist_b/short.wav", figure(20, 1.0), RATE)
    sf.write(audio / "artist_c/uncaptioned.wav", figure(21), RATE)
    captioned = [*GOOD, *(p for p, reason in BAD.items() if reason != "no_caption")]
    holistic = [
        {"path": p, "caption": f"a gentle piece with soft overtones, number {i}"}
        for i, p in enumerate(captioned)
        if p not in NO_HOLISTIC
    ]
    (captions / "holistic.json").write_text(json.dumps(holistic, indent=1))
    dense = [
        (p, f"a slow two-note figure, {60 + 5 * i} BPM, in C major")
        for i, p in enumerate(captioned)
        if p not in NO_DENSE
    ]
    (captions / "dense.csv").write_text("audio,text\n" + "".join(f"{p},{c}\n" for p, c in dense))


def ingested_params() -> dict:
    shipped = read_yaml(REPO / "params.yaml")
    return merge(merge(scratch_repo.tiny_params(shipped), INGESTED), HEALTH_GATES)


@pytest.fixture(scope="module")
def dag(tmp_path_factory) -> tuple[Path, dict, str]:
    """(scratch repo, its environment, what `dvc repro` printed) after the whole DAG ran on
    the foreign dataset and was committed."""
    root = tmp_path_factory.mktemp("ingested-dag")
    env = scratch_repo.create(root, ingested_params())
    write_dataset(root / "inbox")
    with scratch_repo.warm_stages(root, env) as warm:
        output = run([sys.executable, "-m", "dvc", "repro"], root, warm)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "foreign dataset reproduced"], root, env)
    return root, env, output


@pytest.fixture(scope="module")
def reports(dag) -> dict:
    """Every JSON report of the run, by file name (the health checks' figures land here)."""
    root = dag[0]
    files = [*(root / "reports").glob("*.json"), *(root / "reports").glob("*/metrics.json")]
    return {p.relative_to(root / "reports").as_posix(): json.loads(p.read_text()) for p in files}


def origin(root: Path) -> pd.Series:
    """track_id -> path as written in the caption files."""
    tracks = pd.read_parquet(root / "data/corpus/tracks.parquet")
    return tracks.set_index("track_id")["origin_path"]


def test_all_eight_stages_ran(dag) -> None:
    root, _, output = dag
    for stage in ("corpus", "scorers", "curate", "captions", "latents", "pretrain", "finetune"):
        assert f"Running stage '{stage}'" in output
    assert "Running stage 'evaluate'" in output
    assert (root / "reports/listening/index.html").exists()


def test_bad_inputs_are_rejected_with_their_reasons(dag) -> None:
    root = dag[0]
    tracks = pd.read_parquet(root / "data/corpus/tracks.parquet")
    assert sorted(tracks["origin_path"]) == sorted(GOOD)
    assert tracks["quality_level"].isna().all()
    rejects = pd.read_parquet(root / "data/corpus/rejects.parquet")
    assert dict(zip(rejects["path"], rejects["reason"], strict=True)) == BAD
    assert rejects["detail"].str.len().min() > 0
    corpus = json.loads((root / "reports/corpus.json").read_text())
    assert corpus["reject_reasons"] == {
        "missing_audio": 1,
        "no_caption": 1,
        "silent": 1,
        "too_short": 1,
        "undecodable": 1,
    }


def test_scorers_learn_synthetic_quality_targets(reports) -> None:
    quality = reports["scorers.json"]["quality"]
    assert quality["training_targets"] == "synthetic_degradations"
    assert quality["note"].startswith("not measurable on this data")
    assert reports["scorers.json"]["clap"]["note"].startswith("not measurable on this data")


def test_curation_and_captions_on_missing_styles(dag, reports) -> None:
    root = dag[0]
    paths = origin(root)
    curated = pd.read_parquet(root / "data/curated/rejects.parquet")
    assert {paths[t] for t in curated["track_id"]} == NO_HOLISTIC
    assert set(curated["reason"]) == {"missing_caption"}
    captions = pd.read_parquet(root / "data/captions/captions.parquet")
    filled = captions["track_id"].map(paths).isin(NO_DENSE)
    assert filled.any()
    assert (
        captions.loc[filled, "caption_style_fallback"] == "caption_dense from caption_holistic"
    ).all()
    assert captions.loc[~filled, "caption_style_fallback"].isna().all()
    assert reports["curation.json"]["ground_truth"] is None


def test_reports_say_what_is_not_measurable(dag, reports) -> None:
    root = dag[0]
    curation = (root / "reports/curation.md").read_text()
    assert curation.count("not measurable on this data") >= 2
    assert (
        "Attribute accuracy: not measurable on this data"
        in (root / "reports/captions.md").read_text()
    )
    evaluation = (root / "reports/evaluation.md").read_text()
    assert "genre_accuracy: not measurable on this data: no prompt states a genre." in evaluation
    for text in (curation, evaluation):
        assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    metrics = reports["metrics.json"]
    assert metrics["prompts"] == 3
    assert set(metrics["not_measurable"]) == {
        f"{a}_accuracy" for a in ("genre", "instruments", "tempo", "mode")
    }


def test_sanity_flags_are_recorded_and_shown(dag, reports) -> None:
    metrics = reports["metrics.json"]
    flags = metrics["sanity_flags"]
    assert metrics["sanity_flag_count"] == len(flags)
    evaluation = (dag[0] / "reports/evaluation.md").read_text()
    heading = f"## ⚠ Sanity flags ({len(flags)})"
    assert (heading in evaluation) == bool(flags)
    for flag in flags:
        assert flag["message"] in evaluation


def test_the_inbox_is_what_makes_corpus_stale(dag) -> None:
    """dvc.yaml's `corpus` deps: `${data.ingest.audio_root}`, `${data.ingest.caption_root}`."""
    root, env, _ = dag
    dvc = [sys.executable, "-m", "dvc"]

    def stale() -> set[str]:
        return set(json.loads(run([*dvc, "status", "--json"], root, env)))

    assert stale() == set()
    dense = root / "inbox/captions/dense.csv"
    original = dense.read_text()
    dense.write_text(original.replace("in C major", "in A minor", 1))
    assert stale() == {"corpus"}
    dense.write_text(original)
    assert stale() == set()
    sf.write(root / "inbox/audio/artist_c/11.wav", figure(11), RATE)
    assert stale() == {"corpus"}
    (root / "inbox/audio/artist_c/11.wav").unlink()
    assert stale() == set()


def test_health_checks_lead_the_curation_report(dag, reports) -> None:
    """Label-free figures on the dataset's own 3 val tracks, with their chance levels."""
    health = reports["curation.json"]["health"]
    clap, quality, captioner = health["clap"], health["quality"], health["captioner"]
    assert clap["tracks"] == 3 and clap["chance_auc"] == 0.5
    assert clap["chance_r_at_1"] == 1 / 3
    for figure_ in (clap["auc"], clap["r_at_1"], quality["spearman"]):
        assert figure_["low"] <= figure_["value"] <= figure_["high"]
    assert 0.0 <= clap["auc"]["value"] <= 1.0
    assert -1.0 <= quality["spearman"]["value"] <= 1.0 and quality["tracks"] == 3
    assert set(quality["spearman_by_kind"]) == {"noise", "bandlimit", "clip", "bitcrush"}
    assert 0.0 <= captioner["vocabulary"]["coverage"] <= 1.0 and "tags" in captioner
    curation = (dag[0] / "reports/curation.md").read_text()
    first_section = curation.split("\n## ", 2)[1]
    assert first_section.startswith("Scorer health on this data"), curation[:400]
