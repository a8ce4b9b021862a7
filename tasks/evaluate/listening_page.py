"""A self-contained HTML listening page for a text-to-music evaluation, and its browser check.

The page is opened straight from disk (file://): no server, no external resources, audio
linked by relative paths so the folder can be copied or zipped whole. Once every player has
loaded its metadata or failed, an inline script writes the counts and durations into the
DOM; `check_page` reads them back from headless Chromium's dumped DOM, so a broken or
missing clip is caught before a listener opens the page.

CLI: `python -m tasks.evaluate.listening_page PAGE [--screenshot PNG]`.
"""

from __future__ import annotations

import argparse
import html
import numbers
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from tasks.common.atomic import atomic_path


@dataclass(frozen=True)
class Clip:
    path: str  # relative to the page's folder, e.g. "audio/p0003_gen0.wav"
    label: str
    metrics: dict[str, float | str]


@dataclass(frozen=True)
class PromptEntry:
    prompt_id: str
    prompt: str
    attributes: dict[str, str]
    generations: list[Clip]
    reference: Clip | None


@dataclass(frozen=True)
class PageCheck:
    players: int
    audio_loaded: int
    audio_errors: int
    durations: list[float]  # of the players that loaded, in document order
    title: str
    screenshot: Path | None


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Without these, headless Chromium tries to reach Google services, and on a machine with no
# network it floods stderr with refused connections; --no-sandbox because we may run as root.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Virtual time fast-forwards while the page is idle, so a generous budget costs no wall time;
# it only bounds how long (in page time) the players get to load their metadata.
VIRTUAL_TIME_BUDGET_MS = 10_000
WINDOW_WIDTH = 1280
DEFAULT_WINDOW_HEIGHT = 1024
MAX_WINDOW_HEIGHT = 16_384  # Chromium's largest reliable surface; longer pages are cropped
STDERR_TAIL_LINES = 20

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1.5rem; color: #1d1d1f; background: #fafafa; line-height: 1.4; }
h1 { margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; }
th { font-weight: 600; }
.notes p { color: #444; }
section.prompt { background: #fff; border: 1px solid #ddd; border-radius: 8px;
                 padding: 1rem; margin: 1.2rem 0; }
.prompt h2 { font-size: 1rem; margin: 0 0 0.3rem; font-family: monospace; color: #555; }
.prompt-text { font-size: 1.1rem; margin: 0 0 0.5rem; }
.attributes { list-style: none; padding: 0; margin: 0 0 0.8rem; }
.attributes li { display: inline-block; background: #eef; border-radius: 4px;
                 padding: 0.1rem 0.5rem; margin: 0 0.3rem 0.3rem 0; font-size: 0.85rem; }
.attributes .key { color: #557; }
.players { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.player { margin: 0; padding: 0.6rem; border: 1px solid #e2e2e2;
                border-radius: 6px; width: 260px; }
figure.player.reference { border: 2px solid #2a7; background: #f3fbf6; }
figcaption { font-weight: 600; margin-bottom: 0.4rem; }
.badge { background: #2a7; color: #fff; border-radius: 3px; padding: 0 0.4rem;
         font-size: 0.75rem; text-transform: uppercase; margin-right: 0.3rem; }
audio { width: 100%; }
"""

# Settles once per player (metadata loaded, or error), then writes the counts into the DOM
# for `check_page`; players that settled before this script ran are counted immediately.
SCRIPT = """
(() => {
  const players = Array.from(document.querySelectorAll("audio"));
  let pending = players.length;
  const settle = () => {
    let loaded = 0, errors = 0;
    for (const audio of players) {
      if (audio.error) errors += 1;
      else if (audio.readyState >= 1 && Number.isFinite(audio.duration)) {
        loaded += 1;
        audio.dataset.duration = String(audio.duration);
      }
    }
    Object.assign(document.body.dataset, {
      audioLoaded: String(loaded), audioErrors: String(errors),
      pageHeight: String(document.documentElement.scrollHeight),
    });
  };
  for (const audio of players) {
    let seen = false;
    const mark = () => { if (!seen && (seen = true) && --pending === 0) settle(); };
    audio.addEventListener("loadedmetadata", mark);
    audio.addEventListener("error", mark);
    if (audio.error || audio.readyState >= 1) mark();
  }
  if (players.length === 0) settle();
})();
"""


def _text(value: str) -> str:
    return html.escape(value, quote=True)


def _format_metric(value: float | str) -> str:
    # Fixed precision keeps a column of scores aligned; labels and counts read as given.
    is_real = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
    return f"{value:.3f}" if is_real else str(value)


def _audio_src(path: str) -> str:
    # Absolute paths would tie the page to this machine; the folder must stay portable.
    if PurePosixPath(path).is_absolute() or Path(path).is_absolute():
        raise ValueError(f"clip path must be relative to the page folder, got {path!r}")
    return _text(quote(path))


def _table(rows: Sequence[tuple[str, str]], css_class: str) -> str:
    body = "".join(
        f"<tr><th>{_text(name)}</th><td>{_text(value)}</td></tr>" for name, value in rows
    )
    return f'<table class="{css_class}">{body}</table>'


def _player(clip: Clip, is_reference: bool) -> str:
    role = "reference" if is_reference else "generation"
    badge = '<span class="badge">reference</span>' if is_reference else ""
    metrics = [(name, _format_metric(value)) for name, value in clip.metrics.items()]
    metrics_table = _table(metrics, "metrics") if metrics else ""
    return (
        f'<figure class="player {role}" data-role="{role}">'
        f"<figcaption>{badge}{_text(clip.label)}</figcaption>"
        f'<audio controls preload="metadata" src="{_audio_src(clip.path)}"></audio>'
        f"{metrics_table}</figure>"
    )


def _attributes(attributes: dict[str, str]) -> str:
    if not attributes:
        return ""
    items = "".join(
        f'<li><span class="key">{_text(key)}:</span> {_text(value)}</li>'
        for key, value in attributes.items()
    )
    return f'<ul class="attributes">{items}</ul>'


def _section(entry: PromptEntry) -> str:
    players = [_player(clip, is_reference=False) for clip in entry.generations]
    if entry.reference is not None:
        players.append(_player(entry.reference, is_reference=True))
    return (
        f'<section class="prompt" data-prompt-id="{_text(entry.prompt_id)}">'
        f"<h2>{_text(entry.prompt_id)}</h2>"
        f'<p class="prompt-text">{_text(entry.prompt)}</p>'
        f"{_attributes(entry.attributes)}"
        f'<div class="players">{"".join(players)}</div></section>'
    )


def render_page(
    title: str,
    summary: list[tuple[str, str]],
    entries: Sequence[PromptEntry],
    notes: Sequence[str] = (),
) -> str:
    """A complete HTML5 document: title, summary table, notes, one section per prompt."""
    summary_html = (
        f'<section class="summary"><h2>Summary</h2>{_table(summary, "summary")}</section>'
    )
    paragraphs = "".join(f"<p>{_text(note)}</p>" for note in notes)
    notes_html = f'<section class="notes">{paragraphs}</section>' if notes else ""
    sections = "\n".join(_section(entry) for entry in entries)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{_text(title)}</h1>\n{summary_html}\n{notes_html}\n"
        f"<main>\n{sections}\n</main>\n<script>{SCRIPT}</script></body></html>\n"
    )


def write_page(folder: Path, html: str) -> Path:
    """Write `folder/index.html` atomically and return its path."""
    path = folder / "index.html"
    with atomic_path(path) as temporary:
        temporary.write_text(html, encoding="utf-8")
    return path


def find_chromium() -> str | None:
    """`$CHROMIUM` if set, else the first Chromium-like browser on PATH."""
    configured = os.environ.get("CHROMIUM")
    if configured:
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _DomReader(HTMLParser):
    """Collects what the inline script wrote into the dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.players = 0
        self.durations: list[float] = []
        self.body: dict[str, str] = {}
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "audio":
            self.players += 1
            if "data-duration" in values:
                self.durations.append(float(values["data-duration"]))
        elif tag == "body":
            self.body = values
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _stderr_tail(stderr: str) -> str:
    # D-Bus complaints appear on every headless run and hide the line that matters.
    lines = [line for line in stderr.splitlines() if "dbus" not in line]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _run_chromium(command: list[str], timeout_s: float) -> tuple[str, str]:
    """Stdout and stderr of Chromium, run in its own process group so that a timeout can
    end all of its helper processes too."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        raise RuntimeError(
            f"Chromium timed out after {timeout_s:g} s: {shlex.join(command)}\n"
            f"{_stderr_tail(stderr)}"
        ) from None
    if process.returncode != 0:
        raise RuntimeError(
            f"Chromium exited with {process.returncode}: {shlex.join(command)}\n"
            f"{_stderr_tail(stderr)}"
        )
    return stdout, stderr


def _headless(
    chromium: str, extra: Sequence[str], url: str, timeout_s: float
) -> tuple[list[str], str, str]:
    """Run one headless Chromium on `url` in a fresh, throwaway profile."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        budget = f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", budget, *extra, url]
        stdout, stderr = _run_chromium(command, timeout_s)
    return command, stdout, stderr


def _window_height(body: dict[str, str]) -> int:
    try:
        height = int(body.get("data-page-height", ""))
    except ValueError:
        return DEFAULT_WINDOW_HEIGHT
    return max(200, min(height, MAX_WINDOW_HEIGHT))


def take_screenshot(
    chromium: str,
    url: str,
    screenshot: Path,
    height: int,
    timeout_s: float,
    width: int = WINDOW_WIDTH,
) -> None:
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    # Chromium picks the image format from the file extension and rejects anything else, so
    # it writes `shot.png` in a scratch folder beside the target; that is then moved in whole.
    with tempfile.TemporaryDirectory(dir=screenshot.parent, prefix=".screenshot.") as work:
        shot = Path(work) / "shot.png"
        extra = [
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
        ]
        command, _, stderr = _headless(chromium, extra, url, timeout_s)
        if not shot.is_file() or shot.stat().st_size == 0:
            raise RuntimeError(
                f"Chromium wrote no screenshot: {shlex.join(command)}\n{_stderr_tail(stderr)}"
            )
        with atomic_path(screenshot) as temporary:
            os.replace(shot, temporary)


def check_page(
    page: Path,
    screenshot: Path | None = None,
    chromium: str | None = None,
    timeout_s: float = 60,
) -> PageCheck:
    """Load `page` in headless Chromium and report how many of its players loaded."""
    wanted = chromium or find_chromium()
    chromium = shutil.which(wanted) if wanted else None
    if chromium is None:
        raise FileNotFoundError(
            f"no Chromium found{f' at {wanted!r}' if wanted else ''} (install it with "
            "`apt-get install chromium`, or point $CHROMIUM at a Chromium or Chrome binary)"
        )
    if not page.is_file():
        raise FileNotFoundError(f"no such page: {page}")
    url = page.resolve().as_uri()
    # The same width as the screenshot, so the recorded page height matches its layout.
    extra = ["--dump-dom", f"--window-size={WINDOW_WIDTH},{DEFAULT_WINDOW_HEIGHT}"]
    command, dom, stderr = _headless(chromium, extra, url, timeout_s)
    if not dom.strip():
        raise RuntimeError(
            f"Chromium dumped an empty DOM: {shlex.join(command)}\n{_stderr_tail(stderr)}"
        )
    reader = _DomReader()
    reader.feed(dom)
    if screenshot is not None:
        take_screenshot(chromium, url, screenshot, _window_height(reader.body), timeout_s)
    return PageCheck(
        players=reader.players,
        audio_loaded=int(reader.body.get("data-audio-loaded", "0") or 0),
        audio_errors=int(reader.body.get("data-audio-errors", "0") or 0),
        durations=reader.durations,
        title=reader.title.strip(),
        screenshot=screenshot,
    )


def _report(result: PageCheck) -> str:
    lines = [
        f"page: {result.title}",
        f"players: {result.players}  loaded: {result.audio_loaded}  errors: {result.audio_errors}",
    ]
    if durations := result.durations:
        low, mean, high = min(durations), sum(durations) / len(durations), max(durations)
        lines.append(f"durations (s): min {low:.2f}  mean {mean:.2f}  max {high:.2f}")
    if result.screenshot is not None:
        lines.append(f"screenshot: {result.screenshot}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a listening page in headless Chromium.")
    parser.add_argument("page", type=Path, help="the page's index.html")
    parser.add_argument("--screenshot", type=Path, default=None, help="write a PNG here")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per Chromium run")
    args = parser.parse_args(argv)
    try:
        result = check_page(args.page, screenshot=args.screenshot, timeout_s=args.timeout)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    print(_report(result))
    failed = result.players - result.audio_loaded
    if result.players == 0 or failed:
        reason = f"{failed} of {result.players} players did not load" if failed else "no players"
        print(f"FAIL: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
