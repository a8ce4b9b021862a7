"""The listening page: rendering, atomic writing, and a real headless-Chromium load."""

from __future__ import annotations

import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tasks.evaluate.listening_page import (
    Clip,
    PromptEntry,
    check_page,
    find_chromium,
    main,
    render_page,
    write_page,
)

HOSTILE = 'Lo-fi <script>alert("x")</script> & "quotes" \'single\''
SAMPLE_RATE = 16_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    """Records tags with their attributes, and all text, from a rendered page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())

    def of(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]


def _parse(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    return collector


def _entry(reference: bool = True, prompt: str = "calm piano") -> PromptEntry:
    generations = [
        Clip("audio/p0001_gen0.wav", "gen 0", {"clap": 0.41234, "genre": "jazz"}),
        Clip("audio/p0001 gen1.wav", "gen 1", {"clap": 0.5, "tempo": 92.0}),
    ]
    ref = Clip("audio/p0001_ref.wav", "original", {"clap": 0.6}) if reference else None
    return PromptEntry("p0001", prompt, {"genre": "jazz", "mode": "minor"}, generations, ref)


def test_render_escapes_hostile_text_and_links_every_clip() -> None:
    page = render_page(
        "Eval <run> & co",
        [("CLAP", "0.412 [0.40, 0.43]"), ("p-MOS", "3.1 ± 0.2")],
        [_entry(prompt=HOSTILE)],
        notes=["Scores are <b>not</b> calibrated & noisy."],
    )
    parsed = _parse(page)
    # Only the page's own inline script: the hostile prompt's tag is text, not markup.
    assert len(parsed.of("script")) == 1
    assert "<script>alert" not in page
    assert HOSTILE in parsed.text
    assert "Eval <run> & co" in parsed.text
    sources = [attrs["src"] for attrs in parsed.of("audio")]
    assert sources == ["audio/p0001_gen0.wav", "audio/p0001%20gen1.wav", "audio/p0001_ref.wav"]
    for attrs in parsed.of("audio"):
        assert "controls" in attrs and attrs["preload"] == "metadata"
    # No external resources: nothing links, imports or fetches from elsewhere.
    assert not parsed.of("link") and "http" not in page
    roles = [attrs["data-role"] for attrs in parsed.of("figure")]
    assert roles == ["generation", "generation", "reference"]
    assert "reference" in parsed.text
    assert {"0.412", "jazz", "92.000", "0.600"} <= set(parsed.text)


def test_render_shows_summary_notes_and_attributes() -> None:
    page = render_page(
        "Run", [("FAD", "2.345 [2.1, 2.6]")], [_entry()], notes=["First note.", "Second note."]
    )
    parsed = _parse(page)
    assert {"FAD", "2.345 [2.1, 2.6]", "First note.", "Second note."} <= set(parsed.text)
    assert {"genre:", "mode:", "minor", "p0001", "calm piano"} <= set(parsed.text)
    assert page.startswith("<!DOCTYPE html>")


def test_render_without_reference_has_no_reference_player() -> None:
    parsed = _parse(render_page("Run", [], [_entry(reference=False)]))
    assert len(parsed.of("audio")) == 2
    assert [attrs["data-role"] for attrs in parsed.of("figure")] == ["generation", "generation"]
    assert "reference" not in parsed.text


def test_render_rejects_absolute_clip_paths() -> None:
    entry = PromptEntry("p1", "x", {}, [Clip("/abs/a.wav", "gen", {})], None)
    with pytest.raises(ValueError, match="relative"):
        render_page("Run", [], [entry])


def test_write_page_is_atomic_and_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "page"
    first = write_page(folder, "<p>one</p>")
    second = write_page(folder, "<p>two</p>")
    assert first == second == folder / "index.html"
    assert second.read_text() == "<p>two</p>"
    assert [path.name for path in folder.iterdir()] == ["index.html"]


def _sine(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440.0 * time), SAMPLE_RATE)


def _browser_page(folder: Path) -> Path:
    _sine(folder / "audio" / "short.wav", 1.5)
    _sine(folder / "audio" / "long take.wav", 2.5)
    entry = PromptEntry(
        "p0007",
        'A "bright" <synth> & drums',
        {"tempo": "fast"},
        [
            Clip("audio/short.wav", "gen 0", {"clap": 0.3}),
            Clip("audio/long take.wav", "gen 1", {"clap": 0.4}),
        ],
        Clip("audio/short.wav", "original", {"clap": 0.7}),
    )
    page = render_page("Browser check", [("CLAP", "0.35")], [entry], notes=["A note."])
    return write_page(folder, page)


def _png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">I", data[16:20])[0]


def test_check_page_loads_every_player_in_chromium(tmp_path: Path, chromium: str) -> None:
    page = _browser_page(tmp_path / "site")
    shot = tmp_path / "shots" / "page.png"
    result = check_page(page, screenshot=shot, chromium=chromium)
    assert (result.players, result.audio_loaded, result.audio_errors) == (3, 3, 0)
    assert result.durations == pytest.approx([1.5, 2.5, 1.5], abs=0.05)
    assert result.title == "Browser check"
    assert result.screenshot == shot and _png_width(shot) == 1280
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.min() != pixels.max(), "the screenshot is blank"
    assert [path.name for path in shot.parent.iterdir()] == ["page.png"]

    (tmp_path / "site" / "audio" / "long take.wav").unlink()
    broken = check_page(page, chromium=chromium)
    assert (broken.players, broken.audio_loaded, broken.audio_errors) == (3, 2, 1)
    assert broken.screenshot is None
    assert main([str(page)]) == 1


def test_cli_passes_a_good_page(
    tmp_path: Path, chromium: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CHROMIUM", chromium)
    page = _browser_page(tmp_path / "site")
    assert main([str(page)]) == 0
    assert "players: 3  loaded: 3  errors: 0" in capsys.readouterr().out


def test_check_page_reports_a_failing_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = write_page(tmp_path, render_page("Run", [], []))
    with pytest.raises(RuntimeError, match="exited with 1"):
        check_page(page, chromium="false")
    hanging = tmp_path / "hanging-browser"
    hanging.write_text("#!/bin/sh\nsleep 30\n")
    hanging.chmod(0o755)
    with pytest.raises(RuntimeError, match="timed out"):
        check_page(page, chromium=str(hanging), timeout_s=0.5)
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        check_page(page, chromium=str(tmp_path / "no-such-browser"))
    # No $CHROMIUM and an empty PATH: nothing can be found.
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_chromium() is None
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        check_page(page)
