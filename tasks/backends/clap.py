"""CLAP backends (`backends.clap`): `laion`, `hf` (paper scale), `embedded` and `crossfit`.

The CLAP score of a clip and a caption is the dot product of their L2-normalised
embeddings (paper 000 §II-A; docs/reference.md §E).

* `laion`: the LAION-CLAP code itself (via `laion_clap_loader`, no torchvision, no hub),
  a laion `.pt` checkpoint at `backends.clap.path` and a local roberta-base directory at
  `backends.clap.text_model_path`. This is what the baseline, av-benchmark and QA-MDT use
  with music_speech_audioset_epoch_15_esc_89.98.pt (docs/reference.md §E).
* `hf`: the transformers port (`ClapModel` + `ClapProcessor`, e.g. laion/larger_clap_music)
  from one save_pretrained directory at `backends.clap.path`.

* `crossfit`: k embedded CLAPs trained on the dataset's own pairs, a pair scored only by the
  model that never saw its track (tasks/backends/crossfit_clap.py). Pair scores go through
  `pair_audio` / `pair_text` / `pair_scores` / `score_matrix`, which every caller that
  scores (segment, caption) pairs uses; for the other backends they are the plain cosine.

Both take clips of at most 10 s (docs/reference.md pitfall 10: laion and the HF feature
extractor crop longer input at random); callers split longer audio into fixed windows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tasks.backends import laion_clap_loader
from tasks.backends.base import ClapBackend, Registry, require_path, resample
from tasks.backends.crossfit_clap import CrossfitClap, load_crossfit_clap
from tasks.backends.embedded import load_embedded_clap
from tasks.params import BackendChoice

CLAP_BACKENDS: Registry[ClapBackend] = Registry("clap")

CLIP_SECONDS = 10.0  # LAION-CLAP's clip_samples = 480000 at 48 kHz (HTSAT-*.json)
TEXT_MAX_LENGTH = 77  # laion hook.py: padding="max_length", truncation=True, max_length=77


# --------------------------------------------------------------------------- shared helpers
def _check_captions(captions: Sequence[str]) -> list[str]:
    """A list of strings; a bare string would silently embed its characters one by one."""
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError("captions must be a sequence of strings")
    if not captions:
        raise ValueError("empty batch")
    return list(captions)


def _mono_windows(
    waveforms: Sequence[np.ndarray], sample_rate: int, target_rate: int, max_seconds: float
) -> list[np.ndarray]:
    """Each clip resampled to `target_rate`; refuses empty, multichannel or too long clips.

    Long clips are refused rather than cropped: both CLAP front ends would take a random
    crop (docs/reference.md pitfall 10), which makes scores irreproducible.
    """
    if len(waveforms) == 0:
        raise ValueError("empty batch")
    clips = []
    for index, waveform in enumerate(waveforms):
        audio = np.asarray(waveform, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(
                f"clip {index}: expected a non-empty mono clip (T,), got {audio.shape}"
            )
        if audio.size > round(max_seconds * sample_rate):
            raise ValueError(
                f"clip {index} lasts {audio.size / sample_rate:.2f} s; CLAP takes windows of at "
                f"most {max_seconds:g} s (longer input is cropped at random): split it first"
            )
        clips.append(resample(audio, sample_rate, target_rate))
    return clips


def _unit_rows(embedding: torch.Tensor) -> np.ndarray:
    """[N, D] float32 numpy with unit-norm rows (both models normalise already; cheap)."""
    return F.normalize(embedding.detach().float(), dim=-1).numpy().astype(np.float32)


# --------------------------------------------------------------------------- laion
def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a laion checkpoint, `module.` prefix stripped.

    Read with `mmap=True` so that only the pickle's metadata is touched (the full load
    follows in `load_clap_checkpoint`); a legacy non-zip file cannot be mapped and is read
    whole. Always `weights_only=True`.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # "mmap can only be used with files saved with ... zipfile"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state_dict")
    return {
        name.removeprefix("module."): tuple(tensor.shape)
        for name, tensor in state.items()
        if isinstance(tensor, torch.Tensor)
    }


def infer_htsat_variant(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The laion `amodel` whose architecture matches a checkpoint's state-dict shapes.

    laion checkpoints do not record their `amodel`; `CLAP_Module` is simply told (e.g.
    'HTSAT-base' for the music checkpoint, docs/reference.md §E). The shapes do tell: the audio
    projection's input width is the config's `embed_dim` (tiny 768, base 1024, large 2048)
    and the STFT kernel length its `window_size` (1024, or 1536 for HTSAT-tiny-win-1536).
    Only HTSAT configs without fusion are accepted (the input builder is non-fusion).
    """
    if any("fusion_model" in name for name in shapes):
        raise ValueError("fusion LAION-CLAP checkpoints are not supported (enable_fusion=False)")
    projection = shapes.get("audio_projection.0.weight")
    stft = shapes.get("audio_branch.spectrogram_extractor.stft.conv_real.weight")
    swin = "audio_branch.patch_embed.proj.weight" in shapes  # PANN towers have no patch embed
    if projection is None or stft is None or not swin:
        raise ValueError("not an HTSAT LAION-CLAP checkpoint (no audio_projection / HTSAT keys)")
    embed_dim, window = projection[1], stft[-1]
    matches = []
    for config_file in sorted(laion_clap_loader.clap_model_configs_dir().glob("HTSAT*.json")):
        config = laion_clap_loader.load_clap_model_config(config_file.stem)
        audio = config["audio_cfg"]
        if (config["embed_dim"], audio["window_size"]) == (embed_dim, window):
            matches.append(config_file.stem)
    if len(matches) != 1:
        raise ValueError(
            f"cannot tell the HTSAT variant (embed_dim {embed_dim}, window {window}): "
            f"matching configs {matches}"
        )
    return matches[0]


class LaionClap:
    """LAION-CLAP `CLAP` (non-fusion) + its RoBERTa tokenizer, as `CLAP_Module` runs them."""

    sample_rate = laion_clap_loader.CLAP_SAMPLE_RATE

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        # laion's CLAP: its submodules and get_*_embedding are not nn.Module's, so untyped.
        self.model: Any = model.eval()
        self.tokenizer = tokenizer
        projection: Any = model.audio_projection
        self.embedding_dim = int(projection[-1].out_features)

    @torch.inference_mode()
    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """One forward over the batch; each clip resampled to 48 kHz and 'repeatpad'-ed."""
        clips = _mono_windows(waveforms, sample_rate, self.sample_rate, CLIP_SECONDS)
        inputs = laion_clap_loader.clap_audio_input([torch.from_numpy(c) for c in clips])
        return _unit_rows(self.model.get_audio_embedding(inputs))

    @torch.inference_mode()
    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        tokens = laion_clap_loader.tokenize_captions(self.tokenizer, _check_captions(captions))
        return _unit_rows(self.model.get_text_embedding(tokens))


def load_laion_clap(
    checkpoint_path: str | None, text_model_path: str | None, key: str, text_key: str
) -> LaionClap:
    """A laion `.pt` (params `key`) + roberta-base directory (params `text_key`).

    The HTSAT variant comes from the checkpoint's shapes (`infer_htsat_variant`), so one
    code path serves the paper's HTSAT-base music checkpoint and a test's HTSAT-tiny one.
    """
    checkpoint = require_path(checkpoint_path, key, "LAION-CLAP checkpoint (.pt)")
    text_dir = require_path(
        text_model_path, text_key, "roberta-base directory (save_pretrained; LAION-CLAP's text)"
    )
    require_path(text_dir / "config.json", text_key, "roberta-base directory with config.json")
    amodel = infer_htsat_variant(checkpoint_shapes(checkpoint))
    model = laion_clap_loader.build_clap_model(amodel=amodel, text_model_dir=text_dir)
    laion_clap_loader.load_clap_checkpoint(model, checkpoint)
    return LaionClap(model, laion_clap_loader.load_clap_tokenizer(text_dir))


# --------------------------------------------------------------------------- transformers
def pooled_features(output: Any) -> torch.Tensor:
    """The projected features from `get_{audio,text}_features`, across transformers versions.

    transformers 4.x returned the normalised [N, D] tensor; 5.x returns a
    `BaseModelOutputWithPooling` whose `pooler_output` holds that tensor.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"unexpected CLAP features output {type(output).__name__}")
    return pooled


class HfClap:
    """transformers `ClapModel` + `ClapProcessor` (the HF port of LAION-CLAP)."""

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        # transformers' ClapModel: its config and get_*_features are not nn.Module's.
        self.model: Any = model.eval()
        config: Any = model.config
        self.feature_extractor = processor.feature_extractor
        self.tokenizer = processor.tokenizer
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.embedding_dim = int(config.projection_dim)
        self.max_seconds = self.feature_extractor.nb_max_samples / self.sample_rate
        # Non-fusion models need "rand_trunc" input (one slaney mel, as torchlibrosa);
        # "fusion" (4 htk mels) would not even fit their patch embedding.
        fusion = bool(config.audio_config.enable_fusion)
        self.truncation = "fusion" if fusion else "rand_trunc"

    @torch.inference_mode()
    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        clips = _mono_windows(waveforms, sample_rate, self.sample_rate, self.max_seconds)
        features = self.feature_extractor(
            clips, sampling_rate=self.sample_rate, truncation=self.truncation, return_tensors="pt"
        )
        # No clip exceeds max_length (refused above), so none is "longer", as in laion. The
        # extractor's "fusion" mode flags one random clip when none is: undo that.
        is_longer = torch.zeros_like(features["is_longer"], dtype=torch.bool)
        output = self.model.get_audio_features(
            input_features=features["input_features"], is_longer=is_longer
        )
        return _unit_rows(pooled_features(output))

    @torch.inference_mode()
    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(
            _check_captions(captions),
            padding="max_length",
            truncation=True,
            max_length=TEXT_MAX_LENGTH,
            return_tensors="pt",
        )
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return _unit_rows(pooled_features(output))


def load_hf_clap(path: str | None, key: str) -> HfClap:
    """`ClapModel` (safetensors only) + `ClapProcessor` from one local directory.

    Either layout loads: a hub copy (preprocessor_config.json + tokenizer files) or
    `ClapProcessor.save_pretrained` output (processor_config.json in transformers 5). A hub
    copy without model.safetensors must be converted once (no pickle is read here).
    """
    import transformers

    what = "transformers CLAP directory (ClapModel + ClapProcessor save_pretrained)"
    directory = require_path(path, key, what)
    require_path(directory / "config.json", key, what)
    model = transformers.ClapModel.from_pretrained(
        directory, local_files_only=True, use_safetensors=True
    )
    processor = transformers.ClapProcessor.from_pretrained(directory, local_files_only=True)
    return HfClap(model, processor)


# --------------------------------------------------------------------------- registry
@CLAP_BACKENDS.register("embedded")
def _embedded(choice: BackendChoice, key: str) -> ClapBackend:
    return load_embedded_clap(choice.path, key)


@CLAP_BACKENDS.register("crossfit")
def _crossfit(choice: BackendChoice, key: str) -> ClapBackend:
    return load_crossfit_clap(choice.path, key)


@CLAP_BACKENDS.register("laion")
def _laion(choice: BackendChoice, key: str) -> ClapBackend:
    text_key = f"{key.rsplit('.', 1)[0]}.text_model_path"
    return load_laion_clap(choice.path, getattr(choice, "text_model_path", None), key, text_key)


@CLAP_BACKENDS.register("hf")
def _hf(choice: BackendChoice, key: str) -> ClapBackend:
    return load_hf_clap(choice.path, key)


def load_clap(choice: BackendChoice) -> ClapBackend:
    return CLAP_BACKENDS.load(choice)


def text_embeddings(clap: ClapBackend, captions: list[str], batch_size: int) -> np.ndarray:
    return np.concatenate(
        [clap.embed_text(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]
    )


# --------------------------------------------------------------------------- pair scores
# A (segment, caption) score may depend on the segment's track (crossfit: the model that
# held the track out), so pair scoring takes audio and text features plus the audio's track
# ids. Features depend on content only, so curate can cache audio features by content.
def pair_audio(clap: ClapBackend) -> Callable[[Sequence[np.ndarray], int], np.ndarray]:
    """The audio features pair scores are computed from (what curate caches)."""
    return clap.fold_audio if isinstance(clap, CrossfitClap) else clap.embed_audio


def pair_text(clap: ClapBackend, captions: list[str], batch_size: int) -> np.ndarray:
    if isinstance(clap, CrossfitClap):
        return np.concatenate(
            [
                clap.fold_text(captions[i : i + batch_size])
                for i in range(0, len(captions), batch_size)
            ]
        )
    return text_embeddings(clap, captions, batch_size)


def score_matrix(
    clap: ClapBackend, audio: np.ndarray, text: np.ndarray, track_ids: Sequence[str]
) -> np.ndarray:
    """[N, M]: audio features row i (of track `track_ids[i]`) against every text row."""
    if isinstance(clap, CrossfitClap):
        return clap.score_matrix(audio, text, track_ids)
    return audio @ text.T


def pair_scores(
    clap: ClapBackend, audio: np.ndarray, text: np.ndarray, track_ids: Sequence[str]
) -> np.ndarray:
    """[N]: audio features row i against text row i (paper 000 §II-A: the cosine)."""
    if isinstance(clap, CrossfitClap):
        return clap.pair_scores(audio, text, track_ids)
    return np.einsum("nd,nd->n", audio, text)
