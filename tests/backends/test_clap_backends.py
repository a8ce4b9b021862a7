"""tasks/backends/clap.py: the `laion` and `hf` CLAP backends on tiny random checkpoints.

`laion`: a random HTSAT-tiny LAION-CLAP (laion's own model code and JSON config) saved as
laion saves checkpoints, `{"state_dict": {"module.<name>": tensor}}` via torch.save, plus a
tiny save_pretrained RoBERTa; loaded through the registry as a real checkpoint would be.
`hf`: a tiny `ClapConfig` model + `ClapProcessor` saved with save_pretrained.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from tasks.backends import laion_clap_loader
from tasks.backends.base import BackendUnavailable, ClapBackend
from tasks.backends.clap import (
    CLAP_BACKENDS,
    HfClap,
    LaionClap,
    checkpoint_shapes,
    infer_htsat_variant,
    load_clap,
    pooled_features,
)
from tasks.params import ClapChoice
from tests.tiny_models import save_tiny_roberta, tiny_roberta_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # laion's htsat.py

CAPTIONS = ["a calm piano melody", "loud drums and distorted electric guitar"]


def tone(sample_rate: int, seconds: float, seed: int) -> np.ndarray:
    """A band-limited test signal (partials < 4 kHz) sampled exactly at `sample_rate`."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    freqs, phases = rng.uniform(100.0, 4000.0, 6), rng.uniform(0.0, 2 * np.pi, 6)
    signal = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases, strict=True))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t) ** 2
    return (0.1 * envelope * signal).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_roberta(tmp_path_factory.mktemp("roberta-tiny"))


@pytest.fixture(scope="module")
def laion_checkpoint(roberta_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random HTSAT-tiny CLAP in laion's checkpoint layout (DataParallel prefix, epoch)."""
    torch.manual_seed(0)
    model = laion_clap_loader.build_clap_model(amodel="HTSAT-tiny", text_model_dir=roberta_dir)
    state = {f"module.{name}": tensor for name, tensor in model.state_dict().items()}
    path = tmp_path_factory.mktemp("laion") / "clap.pt"
    torch.save({"epoch": 15, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def laion(laion_checkpoint: Path, roberta_dir: Path) -> ClapBackend:
    choice = ClapChoice(
        name="laion", path=str(laion_checkpoint), text_model_path=str(roberta_dir), folds=2
    )
    return load_clap(choice)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ClapModel (tiny text + HTSAT audio towers) and ClapProcessor, both save_pretrained."""
    directory = tmp_path_factory.mktemp("hf-clap")
    tokenizer = tiny_roberta_tokenizer()
    extractor = transformers.ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=48_000,
        hop_length=480,
        max_length_s=10,
        fft_window_size=1024,
        truncation="rand_trunc",  # as in laion/clap-htsat-unfused
        padding="repeatpad",
    )
    transformers.ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(
        directory
    )
    text = transformers.ClapTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=80,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    audio = transformers.ClapAudioConfig(
        patch_embeds_hidden_size=8,
        hidden_size=64,  # patch_embeds_hidden_size * 2 ** (len(depths) - 1)
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        num_mel_bins=64,
        spec_size=256,
    )
    config = transformers.ClapConfig(
        text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=512
    )
    torch.manual_seed(0)
    transformers.ClapModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf(hf_dir: Path) -> ClapBackend:
    return load_clap(ClapChoice(name="hf", path=str(hf_dir), text_model_path=None, folds=2))


# --------------------------------------------------------------------------- both backends
@pytest.fixture(params=["laion", "hf"])
def backend(request: pytest.FixtureRequest) -> ClapBackend:
    return request.getfixturevalue(request.param)


def test_embeddings_are_unit_float32_rows(backend: ClapBackend) -> None:
    assert isinstance(backend, ClapBackend)
    assert (backend.sample_rate, backend.embedding_dim) == (48_000, 512)
    # clips of different lengths share a batch (each is 'repeatpad'-ed to 10 s)
    clips = [tone(48_000, 3.0, seed=0), tone(48_000, 1.0, seed=1)]
    audio, text = backend.embed_audio(clips, 48_000), backend.embed_text(CAPTIONS)
    for embedding in (audio, text):
        assert embedding.dtype == np.float32
        assert embedding.shape == (2, 512)
        np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
        assert not np.allclose(embedding[0], embedding[1])
    # deterministic (no random crop) and independent of the rest of the batch
    np.testing.assert_allclose(backend.embed_audio(clips[:1], 48_000)[0], audio[0], atol=1e-5)
    np.testing.assert_array_equal(backend.embed_text(CAPTIONS[::-1]), text[::-1])
    with pytest.raises(TypeError, match="sequence of strings"):
        backend.embed_text("a bare string")


def test_audio_at_16_khz_is_resampled_to_48_khz(backend: ClapBackend) -> None:
    """Pitfall 10: 16 kHz audio must be upsampled before CLAP, not fed as if 48 kHz."""
    clip_16k, clip_48k = tone(16_000, 4.0, seed=7), tone(48_000, 4.0, seed=7)
    (via_16k,) = backend.embed_audio([clip_16k], 16_000)
    # the 48 kHz original, and the 16 kHz samples mislabelled as 48 kHz
    via_48k, mislabelled = backend.embed_audio([clip_48k, clip_16k], 48_000)
    assert cosine(via_16k, via_48k) > 0.999
    assert cosine(via_16k, via_48k) > cosine(via_16k, mislabelled)


def test_clips_longer_than_10_s_are_refused(backend: ClapBackend) -> None:
    assert backend.embed_audio([np.zeros(160_000, np.float32)], 16_000).shape == (1, 512)
    with pytest.raises(ValueError, match="at most 10 s"):
        backend.embed_audio([np.zeros(160_001, np.float32)], 16_000)
    with pytest.raises(ValueError, match="mono"):
        backend.embed_audio([np.zeros((2, 1000), np.float32)], 16_000)
    with pytest.raises(ValueError, match="empty batch"):
        backend.embed_audio([], 16_000)


# --------------------------------------------------------------------------- laion specifics
def test_laion_loads_the_checkpoint_weights(laion: LaionClap, laion_checkpoint: Path) -> None:
    assert isinstance(laion, LaionClap)
    saved = torch.load(laion_checkpoint, weights_only=True)["state_dict"]
    loaded = laion.model.state_dict()
    for name in ("audio_projection.0.weight", "text_projection.2.bias", "logit_scale_a"):
        torch.testing.assert_close(loaded[name], saved[f"module.{name}"], rtol=0, atol=0)
    assert laion.model.text_branch.config.num_hidden_layers == 1  # the local RoBERTa dir


def test_htsat_variant_is_read_from_state_dict_shapes() -> None:
    stft = "audio_branch.spectrogram_extractor.stft.conv_real.weight"

    def shapes(embed_dim: int, window: int) -> dict[str, tuple[int, ...]]:
        return {
            "audio_projection.0.weight": (512, embed_dim),
            stft: (window // 2 + 1, 1, window),
            "audio_branch.patch_embed.proj.weight": (embed_dim // 8, 1, 4, 4),
        }

    assert infer_htsat_variant(shapes(768, 1024)) == "HTSAT-tiny"
    assert infer_htsat_variant(shapes(768, 1536)) == "HTSAT-tiny-win-1536"
    assert infer_htsat_variant(shapes(1024, 1024)) == "HTSAT-base"  # the music checkpoint
    assert infer_htsat_variant(shapes(2048, 1024)) == "HTSAT-large"
    with pytest.raises(ValueError, match="variant"):
        infer_htsat_variant(shapes(640, 1024))
    with pytest.raises(ValueError, match="fusion"):
        infer_htsat_variant({**shapes(768, 1024), "audio_branch.fusion_model.x": (1,)})
    pann14 = shapes(2048, 1024)  # PANN-14 has HTSAT-large's widths, but no patch embed
    del pann14["audio_branch.patch_embed.proj.weight"]
    with pytest.raises(ValueError, match="HTSAT"):
        infer_htsat_variant({**pann14, "audio_branch.fc1.weight": (2048, 2048)})


def test_checkpoint_shapes_of_zip_and_legacy_files(tmp_path: Path) -> None:
    """Zip checkpoints are memory-mapped for the shape peek; legacy ones are read whole."""
    state = {"module.audio_projection.0.weight": torch.zeros(512, 1024)}
    for legacy in (False, True):
        path = tmp_path / f"legacy-{legacy}.pt"
        torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=not legacy)
        assert checkpoint_shapes(path) == {"audio_projection.0.weight": (512, 1024)}


def test_laion_refuses_pickled_objects(roberta_dir: Path, tmp_path: Path) -> None:
    """weights_only=True: a checkpoint carrying arbitrary objects is not unpickled."""
    path = tmp_path / "with-args.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(amodel="HTSAT-base")}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_clap(
            ClapChoice(name="laion", path=str(path), text_model_path=str(roberta_dir), folds=2)
        )


def test_laion_missing_paths_name_their_params_keys(
    laion_checkpoint: Path, roberta_dir: Path, tmp_path: Path
) -> None:
    cases = [
        (None, str(roberta_dir), r"backends\.clap\.path"),
        (str(tmp_path / "absent.pt"), str(roberta_dir), r"backends\.clap\.path"),
        (str(laion_checkpoint), None, r"backends\.clap\.text_model_path"),
        (str(laion_checkpoint), str(tmp_path / "absent"), r"backends\.clap\.text_model_path"),
        (str(laion_checkpoint), str(tmp_path), r"backends\.clap\.text_model_path"),  # no config
    ]
    for path, text_model_path, key in cases:
        choice = ClapChoice(name="laion", path=path, text_model_path=text_model_path, folds=2)
        with pytest.raises(BackendUnavailable, match=key):
            load_clap(choice)


# --------------------------------------------------------------------------- hf specifics
def test_hf_reads_sample_rate_and_input_mode_from_the_directory(hf: HfClap) -> None:
    assert isinstance(hf, HfClap)
    assert hf.truncation == "rand_trunc"  # a non-fusion model
    assert hf.max_seconds == 10.0
    assert hf.model.config.text_config.num_hidden_layers == 1


def test_hf_reads_a_hub_layout_directory(hf: HfClap, hf_dir: Path, tmp_path: Path) -> None:
    """Hub copies hold preprocessor_config.json + tokenizer files, not processor_config.json."""
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf_dir / name, tmp_path / name)
    hf.feature_extractor.save_pretrained(tmp_path)
    tiny_roberta_tokenizer().save_pretrained(tmp_path)
    assert not (tmp_path / "processor_config.json").exists()
    copy = load_clap(ClapChoice(name="hf", path=str(tmp_path), text_model_path=None, folds=2))
    np.testing.assert_array_equal(copy.embed_text(CAPTIONS), hf.embed_text(CAPTIONS))


def test_hf_features_output_of_either_transformers_major() -> None:
    """4.x returned the tensor; 5.x a BaseModelOutputWithPooling holding it."""
    features = torch.ones(2, 4)
    assert pooled_features(features) is features
    output = transformers.modeling_outputs.BaseModelOutputWithPooling(pooler_output=features)
    assert pooled_features(output) is features
    with pytest.raises(TypeError):
        pooled_features(transformers.modeling_outputs.BaseModelOutput(last_hidden_state=features))


def test_hf_missing_directory_names_the_key(tmp_path: Path) -> None:
    for path in (None, str(tmp_path / "absent"), str(tmp_path)):
        with pytest.raises(BackendUnavailable, match=r"backends\.clap\.path"):
            load_clap(ClapChoice(name="hf", path=path, text_model_path=None, folds=2))


def test_unknown_backend_lists_the_known_names() -> None:
    assert {"embedded", "hf", "laion"} <= set(CLAP_BACKENDS.names)
    with pytest.raises(ValueError, match=r"backends\.clap\.name.*embedded, hf, laion"):
        load_clap(ClapChoice(name="clap-9000", path=None, text_model_path=None, folds=2))
