"""tasks/corpus/ingest.py on a tiny dataset in the ATTM / MTG-Jamendo layout (docs/reference.md
§B.1)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tasks.common import schema
from tasks.common.schema import numeric_id
from tasks.corpus.ingest import IngestResult, assign_ids, ingest_dataset, load_captions
from tasks.params import CaptionSource, DataParams, Params, merge, read_yaml

PARAMS_YAML = Path(__file__).resolve().parents[2] / "params.yaml"
MIN_SECONDS = 1.0
# relative path -> (seconds, sample rate, channels, write options); all decodable and kept
GOOD = {
    "00/1085700_instrumental.mp3": (2.0, 22050, 2, {"format": "MP3"}),
    "00/1000100.wav": (2.5, 44100, 1, {}),
    "01/1000201.flac": (3.0, 22050, 2, {}),
    "01/1000301.ogg": (2.0, 44100, 2, {"format": "OGG", "subtype": "VORBIS"}),
    "02/1000402.wav": (1.5, 16000, 1, {}),
}
DENSE = ["00/1085700_instrumental.mp3", "01/1000201.flac", "01/1000301.ogg"]
BAD = {  # path as written in the caption file / found under the root -> reason
    "00/1000500.mp3": "undecodable",
    "01/1000601.wav": "silent",
    "01/1000701.wav": "too_short",
    "01/1000801.wav": "no_caption",
    "02/1000902.mp3": "missing_audio",
    "../outside.wav": "outside_root",
    "02/1000999.wav": "outside_root",  # a symlink to ../outside.wav
}


def tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    return np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1)


def build_dataset(base: Path) -> tuple[Path, Path, Path]:
    """Audio root, holistic JSON captions, dense CSV captions."""
    root = base / "jamendo"
    for sub in ("00", "01", "02"):
        (root / sub).mkdir(parents=True)
    for rel, (seconds, rate, channels, options) in GOOD.items():
        sf.write(root / rel, tone(seconds, rate, channels), rate, **options)
    (root / "00/1000500.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    sf.write(root / "01/1000601.wav", np.zeros(3 * 22050), 22050)
    sf.write(root / "01/1000701.wav", tone(0.5, 22050, 1), 22050)
    sf.write(root / "01/1000801.wav", tone(2.0, 22050, 1), 22050)
    sf.write(base / "outside.wav", tone(2.0, 22050, 1), 22050)
    (root / "02/1000999.wav").symlink_to(base / "outside.wav")

    captioned = [*GOOD, *(p for p, reason in BAD.items() if reason != "no_caption")]
    holistic = [{"path": p, "caption": f"holistic {p}"} for p in captioned]
    holistic.append({"path": str(base / "outside.wav"), "caption": "absolute path"})
    holistic.append({"path": "02/1000402.wav", "caption": "a duplicate is ignored"})
    holistic_file = base / "jamendo_qwen.json"
    holistic_file.write_text(json.dumps(holistic))
    dense_file = base / "jamendo_flamingo.csv"
    with dense_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audio", "text"])
        writer.writerows([p, f"dense {p}, 120 BPM, A minor"] for p in DENSE)
        writer.writerow(["00/1000100.wav", "   "])  # whitespace-only: counts as missing
    return root, holistic_file, dense_file


def data_params(
    root: Path, sources: list[dict], workers: int = 1, caption_root: Path | None = None
) -> DataParams:
    """Ingest params; the caption files lie in `caption_root` (default: beside the root)."""
    ingest = {
        "audio_root": str(root),
        "caption_root": str(caption_root or root.parent),
        "caption_sources": sources,
    }
    overlay = {"data": {"source": "ingest", "workers": workers, "ingest": ingest}}
    return Params.from_mapping(merge(read_yaml(PARAMS_YAML), overlay)).data


def source(
    file: Path, style: str, path_column: str = "path", caption_column: str = "caption"
) -> dict:
    return {
        "file": file.name,  # relative to data.ingest.caption_root
        "style": style,
        "path_column": path_column,
        "caption_column": caption_column,
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    base = tmp_path_factory.mktemp("dataset")
    root, holistic, dense = build_dataset(base)
    return root, [source(holistic, "holistic"), source(dense, "dense", "audio", "text")]


@pytest.fixture(scope="module")
def ingested(dataset, tmp_path_factory) -> tuple[IngestResult, Path, DataParams]:
    root, sources = dataset
    data = data_params(root, sources)
    output = tmp_path_factory.mktemp("corpus")
    return ingest_dataset(data, seed=7, min_seconds=MIN_SECONDS, output_root=output), output, data


def test_good_files_are_kept_mono_at_target_rate(ingested) -> None:
    result, output, data = ingested
    tracks = result.tracks.set_index("origin_path")
    assert list(result.tracks.columns) == list(schema.TRACK_COLUMNS)
    assert sorted(tracks.index) == sorted(GOOD)
    for rel, (seconds, *_) in GOOD.items():
        row = tracks.loc[rel]
        assert row["track_id"] == numeric_id(rel)
        assert row["audio_path"] == f"audio/{row['track_id']}.flac"
        assert abs(row["duration_s"] - seconds) <= 2 / data.sample_rate
        info = sf.info(output / row["audio_path"])
        assert (info.samplerate, info.channels, info.subtype) == (data.sample_rate, 1, "PCM_16")
        assert abs(info.frames - seconds * data.sample_rate) <= 2
        assert row["sample_rate"] == data.sample_rate
        assert (row["source"], row["caption_noise"]) == ("ingest", "unknown")
        assert row["caption_holistic"] == f"holistic {rel}"
        assert pd.isna(row["prompt_concise"]) and pd.isna(row["genre"])
        assert row["instruments"] is None and pd.isna(row["quality_level"])
    assert tracks.loc["00/1085700_instrumental.mp3", "track_id"] == "1085700"


def test_both_caption_styles_merge(ingested) -> None:
    tracks = ingested[0].tracks.set_index("origin_path")
    for rel in GOOD:
        dense = tracks.loc[rel, "caption_dense"]
        assert dense == f"dense {rel}, 120 BPM, A minor" if rel in DENSE else pd.isna(dense)


def test_bad_inputs_are_rejected_with_reasons(ingested, dataset) -> None:
    rejects = ingested[0].rejects
    assert list(rejects.columns) == list(schema.REJECT_COLUMNS)
    reasons = dict(zip(rejects["path"], rejects["reason"], strict=True))
    absolute = str(dataset[0].parent / "outside.wav")
    assert reasons == {**BAD, absolute: "outside_root"}
    assert rejects["detail"].str.len().min() > 0
    silent = rejects.set_index("reason").loc["silent", "detail"]
    assert "dBFS" in silent


def test_splits_and_outputs(ingested) -> None:
    result, output, _ = ingested
    assert set(result.tracks["split"]) == {"train", "val", "test"}
    assert list(result.tracks["track_id"]) == sorted(result.tracks["track_id"])
    written = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    assert written == sorted(result.tracks["audio_path"])


def test_same_result_with_two_workers(ingested, dataset, tmp_path) -> None:
    result, output, _ = ingested
    root, sources = dataset
    parallel = ingest_dataset(data_params(root, sources, workers=2), 7, MIN_SECONDS, tmp_path)
    pd.testing.assert_frame_equal(parallel.tracks, result.tracks)
    pd.testing.assert_frame_equal(parallel.rejects, result.rejects)
    for rel in result.tracks["audio_path"]:
        np.testing.assert_array_equal(sf.read(tmp_path / rel)[0], sf.read(output / rel)[0])


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broken.json", '[{"path": "00/1.mp3", "caption": '),
        ("object.json", '{"path": "00/1.mp3"}'),
        ("broken.jsonl", '{"path": "00/1.mp3", "caption": "x"}\nnot json\n'),
        ("nopath.csv", "file,caption\n00/1.mp3,x\n"),
        ("captions.txt", "00/1.mp3 x\n"),
        ("absent.json", None),
    ],
)
def test_malformed_caption_file_raises(tmp_path, name: str, content: str | None) -> None:
    file = tmp_path / name
    if content is not None:
        file.write_text(content)
    data = data_params(tmp_path, [source(file, "holistic")], caption_root=tmp_path)
    with pytest.raises(ValueError, match=r"data\.ingest\.caption_sources\[0\].*" + name):
        ingest_dataset(data, 7, MIN_SECONDS, tmp_path / "out")


def test_jsonl_and_tsv_captions(tmp_path) -> None:
    jsonl, tsv = tmp_path / "a.jsonl", tmp_path / "b.tsv"
    jsonl.write_text(
        '{"path": "00/1.mp3", "caption": "one"}\n\n{"path": "01/2.mp3", "caption": 5}\n'
    )
    tsv.write_text('id\tcaption\n00/1.mp3\t"quoted" concise\n')
    entries = load_captions(
        [
            CaptionSource(
                file=jsonl.name, style="dense", path_column="path", caption_column="caption"
            ),
            CaptionSource(
                file=tsv.name, style="concise", path_column="id", caption_column="caption"
            ),
        ],
        tmp_path,
    )
    assert entries["00/1.mp3"].captions == {"dense": "one", "concise": '"quoted" concise'}
    assert entries["01/2.mp3"].captions == {}


def test_ids_from_numeric_stems_and_collisions() -> None:
    assert numeric_id("00/1085700_instrumental.mp3") == "1085700"
    assert numeric_id("ab/intro.wav") == "intro"
    ids = assign_ids(["00/1085700.mp3", "01/1085700.mp3", "01/1085700.wav", "02/42.ogg"])
    assert ids == {
        "00/1085700.mp3": "00_1085700",
        "01/1085700.mp3": "01_1085700",
        "01/1085700.wav": "01_1085700.wav",
        "02/42.ogg": "42",
    }


def test_too_few_usable_tracks_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "00").mkdir()
    sf.write(tmp_path / "00/1.wav", tone(2.0, 16000, 1), 16000)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps([{"path": "00/1.wav", "caption": "x"}]))
    data = data_params(tmp_path, [source(captions, "holistic")], caption_root=tmp_path)
    with pytest.raises(ValueError, match=r"data\.ingest: 1 usable tracks"):
        ingest_dataset(data, 7, MIN_SECONDS, tmp_path / "out")


@pytest.mark.parametrize(
    ("file", "match"),
    [
        ("/etc/captions.json", "relative to data.ingest.caption_root"),
        ("../captions.json", "resolves outside data.ingest.caption_root"),
    ],
)
def test_caption_files_must_lie_in_the_caption_root(tmp_path, file: str, match: str) -> None:
    """dvc.yaml's `corpus` depends on caption_root: a file elsewhere would escape DVC."""
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions.json").write_text("[]")
    sources = [{**source(tmp_path / "x.json", "holistic"), "file": file}]
    data = data_params(tmp_path, sources, caption_root=tmp_path / "captions")
    with pytest.raises(ValueError, match=r"caption_sources\[0\]\.file = .*" + match):
        ingest_dataset(data, 7, MIN_SECONDS, tmp_path / "out")


def test_missing_folders_and_sources_name_their_key(tmp_path) -> None:
    data = data_params(tmp_path / "absent", [], caption_root=tmp_path)
    with pytest.raises(ValueError, match=r"data\.ingest\.audio_root: .*absent is not a directory"):
        ingest_dataset(data, 7, MIN_SECONDS, tmp_path / "out")
    data = data_params(tmp_path, [], caption_root=tmp_path / "absent")
    with pytest.raises(ValueError, match=r"data\.ingest\.caption_root: .*absent is not a dir"):
        ingest_dataset(data, 7, MIN_SECONDS, tmp_path / "out")
    with pytest.raises(ValueError, match=r"data\.ingest\.caption_sources: empty"):
        ingest_dataset(data_params(tmp_path, []), 7, MIN_SECONDS, tmp_path / "out")
