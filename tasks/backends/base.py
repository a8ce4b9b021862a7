"""The interfaces every pretrained part sits behind, and the registry that picks one.

docs/architecture.md "Two profiles, one code path": `backends.<part>.name` selects an
implementation, `backends.<part>.path` is its local checkpoint. A backend whose checkpoint is
absent raises `BackendUnavailable` naming the params key; nothing ever falls back to another
backend.

Conventions shared by all audio backends: waveforms are mono float32 numpy arrays, given
with their sample rate; the backend converts to its own rate (`resample`) and batches as
told by the caller. Outputs are float32 numpy arrays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from tasks.params import BackendChoice


class BackendUnavailable(FileNotFoundError):
    """A selected backend cannot run here (missing checkpoint or package); names the key."""


@runtime_checkable
class ClapBackend(Protocol):
    """Joint audio-text embeddings; the CLAP score is the dot product (paper 000 §II-A)."""

    sample_rate: int
    embedding_dim: int

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, D], L2-normalised, one row per clip (clips of at most 10 s)."""
        ...

    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        """[N, D], L2-normalised."""
        ...


@runtime_checkable
class TextEncoderBackend(Protocol):
    """Token-level conditioning for the DiT (FLAN-T5, paper 000 Fig. 3; 77 tokens:
    docs/reference.md §A.4)."""

    dim: int
    max_length: int

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(sequence [N, max_length, dim] float32, mask [N, max_length] bool)."""
        ...


@runtime_checkable
class QualityBackend(Protocol):
    """A pseudo-MOS predictor (paper 003 §4.1): one score per clip, higher is better."""

    sample_rate: int

    def predict(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N] float32 p-MOS."""
        ...


@runtime_checkable
class FrameTeacherBackend(Protocol):
    """Frame-level features for REPA-MuQ (paper 000 eq. (5)) at `frame_rate` Hz."""

    sample_rate: int
    frame_rate: float
    dim: int

    def features(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, frames, dim] float32; clips of one batch have one length."""
        ...


@runtime_checkable
class CodecBackend(Protocol):
    """Audio <-> latent frames (paper 000: ACE-Step 1.5, 25 Hz x 64; paper 003: AudioLDM2 VAE).

    `grid` = (channels, frequency) with channels * frequency = latent_dim: the 2-D
    time x frequency view paper 003's patchify needs is `latents.reshape(T, *grid)`, a
    view of the same cached array, never a second cache.
    """

    sample_rate: int
    frame_rate: float
    latent_dim: int
    grid: tuple[int, int]

    def encode(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, T, latent_dim] float32 for mono clips of one length; T = seconds * frame_rate."""
        ...

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """[N, samples] float32 mono audio at `sample_rate` from [N, T, latent_dim]."""
        ...


@runtime_checkable
class CaptionerBackend(Protocol):
    """Re-captions audio: step 1 of paper 003 §4.3 (LP-MusicCaps there)."""

    sample_rate: int

    def caption(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        """One caption per mono clip."""
        ...


@dataclass(frozen=True)
class Rewritten:
    """One LLM (or embedded) output with its provenance."""

    text: str
    backend: str  # the backend that produced `text`: "transformers", "embedded", ...
    fallback: str | None  # why the selected backend's output was not used; None if it was


@runtime_checkable
class RewriterBackend(Protocol):
    """Caption rewriting (paper 000 §II-B) and caption merging (paper 003 §4.3 step 3)."""

    name: str

    def rewrite(self, captions: Sequence[str], examples: Sequence[str]) -> list[Rewritten]:
        """Each caption in the concise inference style; `examples` fill the prompt's {examples}."""
        ...

    def merge(self, originals: Sequence[str], generated: Sequence[str]) -> list[Rewritten]:
        """Each (original, generated) pair fused into one caption, adding nothing imaginary."""
        ...


B = TypeVar("B")
Loader = Callable[[BackendChoice, str], B]


class Registry(Generic[B]):
    """name -> loader(choice, params_key) for one pretrained part (e.g. `backends.clap`)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self._loaders: dict[str, Loader[B]] = {}

    def register(self, name: str) -> Callable[[Loader[B]], Loader[B]]:
        def add(loader: Loader[B]) -> Loader[B]:
            self._loaders[name] = loader
            return loader

        return add

    @property
    def names(self) -> list[str]:
        return sorted(self._loaders)

    def load(self, choice: BackendChoice) -> B:
        loader = self._loaders.get(choice.name)
        if loader is None:
            raise ValueError(
                f"backends.{self.part}.name: unknown backend {choice.name!r}; "
                f"known: {', '.join(self.names)}"
            )
        return loader(choice, f"backends.{self.part}.path")


def require_path(path: str | Path | None, key: str, what: str) -> Path:
    """`path` if it exists, else BackendUnavailable naming the params `key` to set."""
    if path is None:
        raise BackendUnavailable(f"params `{key}` is null; set it to the local {what}")
    resolved = Path(path)
    if not resolved.exists():
        raise BackendUnavailable(
            f"params `{key}` = {str(path)!r} does not exist; it must be the local {what} "
            "(nothing is downloaded at run time)"
        )
    return resolved


def require_package(module: str, key: str, why: str = "") -> None:
    """Import `module` or raise BackendUnavailable saying which backend needs it."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken install raising at import
        raise BackendUnavailable(
            f"the backend selected by params `{key.rsplit('.', 1)[0]}.name` needs the "
            f"`{module}` package, which cannot be imported here ({type(error).__name__}: "
            f"{error}). {why}".strip()
        ) from error


def checkpoint_identity(path: str | Path) -> dict[str, object]:
    """Path, total bytes and a SHA-256 over every file (sorted) of a checkpoint file or dir."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    size = 0
    for file in files:
        digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"path": str(root), "files": len(files), "bytes": size, "sha256": digest.hexdigest()}


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """soxr (librosa), as ingest resamples; float32 in, float32 out, last axis is time."""
    audio = np.asarray(audio, dtype=np.float32)
    if source_rate == target_rate:
        return audio
    import librosa  # here, not at the top: the backend protocols import without the audio stack

    out = librosa.resample(audio, orig_sr=source_rate, target_sr=target_rate, res_type="soxr_hq")
    return out.astype(np.float32)


def stack_clips(waveforms: Sequence[np.ndarray], source_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono clips of one length and stack them [N, T]; refuses ragged batches."""
    clips = [resample(np.asarray(w, dtype=np.float32), source_rate, target_rate) for w in waveforms]
    if not clips:
        raise ValueError("empty batch")
    if any(c.ndim != 1 for c in clips):
        raise ValueError("expected mono clips of shape (T,)")
    if len({c.shape[0] for c in clips}) != 1:
        raise ValueError("clips of one batch must have one length; batch by length")
    return np.stack(clips)
