"""The evaluate stage: its inputs, its conditions, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from threadpoolctl import threadpool_limits

from tasks.common.generation import level_prefix
from tasks.evaluate.inputs import (
    AudioFile,
    folder_reference_files,
    read_reference,
    tsv_prompts,
    window_starts,
)
from tasks.params import Params, merge
from tests.conftest import inside_workspace

RATE = 16000


def test_window_starts_are_evenly_spaced_like_partition_clips() -> None:
    assert window_starts(30.0, 10.0, 3) == [0.0, 10.0, 20.0]
    assert window_starts(25.0, 10.0, 2) == [0.0, 15.0]
    assert window_starts(12.0, 10.0, 4) == [0.0]  # only one fits
    assert window_starts(9.9, 10.0, 2) == []


def test_tsv_prompts_read_the_challenge_format_and_refuse_broken_rows(tmp_path: Path) -> None:
    good = tmp_path / "test.tsv"
    good.write_text('id\tcaption\n1085700\tAn upbeat EDM track with "pulsing" synths.\n7\tCalm.\n')
    prompts = tsv_prompts(good)
    assert prompts.ids == ["1085700", "7"]
    assert prompts.prompts[0] == 'An upbeat EDM track with "pulsing" synths.'
    assert prompts.table["reference_id"].tolist() == ["1085700", "7"]
    for text, message in (
        ("name\tcaption\n1\ta\n", "lacks the column"),
        ("id\tcaption\n1\t \n", "empty prompt"),
        ("id\tcaption\n1\ta\n1\tb\n", "duplicated prompt id"),
    ):
        bad = tmp_path / "bad.tsv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            tsv_prompts(bad)
    with pytest.raises(FileNotFoundError, match=r"evaluate\.prompts"):
        tsv_prompts(tmp_path / "missing.tsv")


def test_reference_folder_records_every_unusable_file(tmp_path: Path) -> None:
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(12 * RATE)) / RATE)
    (tmp_path / "00").mkdir()
    sf.write(tmp_path / "00/1085700_instrumental.wav", tone, RATE)
    sf.write(tmp_path / "short.wav", tone[: RATE * 3], RATE)
    sf.write(tmp_path / "silent.wav", np.zeros(12 * RATE), RATE)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")
    files = folder_reference_files(tmp_path, [".wav"])
    assert {f.reference_id for f in files} == {"1085700", "short", "silent", "broken"}
    files.append(AudioFile("gone", tmp_path / "gone.wav", 30.0))
    reference = read_reference(files, RATE, 5.0, 2, -60.0, str(tmp_path))
    assert reference.ids == ["1085700", "1085700"]  # two 5-s windows of the 12-s tone
    assert reference.clips.shape == (2, 5 * RATE)
    reasons = {r["reference_id"]: r["reason"] for r in reference.rejected}
    assert reasons == {
        "short": "too_short",
        "silent": "silent",
        "broken": "undecodable",
        "gone": "missing_audio",
    }
    assert reference.first_clip("1085700") == 0 and reference.first_clip("short") is None
    with pytest.raises(ValueError, match=r"no usable reference clip .*'undecodable': 1.* 5 s"):
        read_reference(files[1:2], RATE, 5.0, 2, -60.0, "x")


def test_level_prefix_follows_the_bins(tiny_params: Params) -> None:
    prefixes = [level_prefix(tiny_params.quality, level) for level in range(1, 6)]
    assert prefixes == [
        "low quality",
        "low quality",
        "medium quality",
        "high quality",
        "high quality",
    ]


EVALUATE = {"evaluate": {"generations_per_prompt": 2, "bootstrap_resamples": 200}}


@pytest.mark.slow
def test_evaluate_writes_every_report_and_reproduces_them(trained_workspace, tmp_path) -> None:
    from tasks.evaluate import stage as evaluate
    from tasks.evaluate.report import write_reports

    source, raw = trained_workspace
    params = Params.from_mapping(merge(raw, EVALUATE))
    outputs = {}
    # The second run with single-threaded BLAS under numpy (FAD, bootstrap, analysis): a
    # fresh clone's `make run` must leave `git status` clean, and float64 linear algebra
    # was where reruns differed (1e-9, threaded BLAS). torch keeps its thread count: its
    # float32 kernels round differently for other thread counts (docs/architecture.md
    # "Reproducibility"), and a given machine always runs them with the same count.
    for attempt, limit in (("first", None), ("second", 1)):
        root = tmp_path / attempt
        shutil.copytree(source, root)
        with inside_workspace(root), threadpool_limits(limits=limit, user_api="blas"):
            result = evaluate.run(params)
            import mlflow

            with mlflow.start_run() as run:
                summary = write_reports(result, params)
            run_tags = mlflow.get_run(run.info.run_id).data.tags
        reports = root / "reports"
        outputs[attempt] = {
            path.relative_to(reports): path.read_bytes()
            for path in [
                reports / "metrics.json",
                reports / "evaluation.md",
                *sorted((reports / "evaluate").glob("*.csv")),
            ]
        }
    assert outputs["first"] == outputs["second"]  # seeded, and independent of the threads
    outputs = {attempt: files[Path("metrics.json")].decode() for attempt, files in outputs.items()}

    metrics = json.loads(outputs["first"])
    prompts = metrics["prompts"]
    assert metrics["generated_clips"] == 2 * prompts
    generated = metrics["generated"]
    for name in ("clap_score", "fad_clap", "fad_teacher", "kl", "inception_score", "pmos"):
        record = generated[name]
        assert np.isfinite(record["value"]) and record["low"] <= record["high"], name
        assert record["prompts"] >= 1
    for name in ("clap_score", "pmos", "kl"):  # per-prompt means: the estimate is inside
        assert generated[name]["low"] <= generated[name]["value"] <= generated[name]["high"]
    assert "fad_clap" not in metrics["reference"]  # no distance of the reference to itself
    assert set(metrics["quality_curve"]) == {"level_1", "level_5"}
    assert summary["generated"]["clap_score"] == metrics["generated"]["clap_score"]

    reports = tmp_path / "first/reports"
    markdown = (reports / "evaluation.md").read_text()
    assert "Concept Coverage Score" in markdown and "Table I" in markdown
    # The tiny set's 5 prompts < evaluate.min_prompts_for_rates: its accuracies are flagged as
    # thin, with their numbers, at the top of the report and on the MLflow run.
    flags = metrics["sanity_flags"]
    assert metrics["sanity_flag_count"] == len(flags) > 0
    assert "too_few_prompts" in {flag["check"] for flag in flags}
    assert markdown.index("## ⚠ Sanity flags") < markdown.index("Table I")
    assert all(flag["message"] in markdown for flag in flags)
    assert run_tags["sanity_flags"] == str(len(flags))
    assert flags[0]["message"] in run_tags["mlflow.note.content"]
    for stem in ("loss_curves", "clap_scores", "beta_densities", "quality_curve"):
        assert (reports / f"evaluate/{stem}.png").stat().st_size > 0
        assert (reports / f"evaluate/{stem}.csv").stat().st_size > 0
    page = reports / "listening/index.html"
    wavs = sorted((reports / "listening/audio").glob("*.wav"))
    assert page.exists() and len(wavs) >= 2 * prompts
    assert page.read_text().count("<audio") == len(wavs)
    from tasks.evaluate.listening_page import check_page, find_chromium

    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium: CI must open the listening page")
        return
    check = check_page(page)
    assert check.players == len(wavs) and check.audio_loaded == len(wavs)
    assert check.audio_errors == 0 and all(abs(d - 10.0) < 0.05 for d in check.durations)
