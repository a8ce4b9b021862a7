"""Codec backends: the mel25 front end and inversion, and the real VAEs on tiny random models.

The real backends load tiny, randomly initialised diffusers / transformers models written
with `save_pretrained` into `tmp_path`, through exactly the loading code a downloaded
checkpoint takes (`local_files_only=True`, `use_safetensors=True`).
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderOobleck
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from tasks.backends.base import BackendUnavailable, CodecBackend, resample
from tasks.backends.codec import (
    AUDIOLDM_F_MAX,
    AUDIOLDM_N_FFT,
    AudioLdm2Codec,
    OobleckCodec,
    codec_identity,
    load_codec,
)
from tasks.backends.mel_codec import (
    MEL25_POWER_FLOOR,
    MEL_INVERSION_ITERS,
    Mel25Codec,
    griffin_lim,
    log_mel,
    nnls_mel_inverse,
)
from tasks.params import BackendChoice, Mel25Params
from tasks.synthesis.arrangement import render, sample_track_spec

MEL25 = Mel25Params(sample_rate=16000, n_mels=64, frame_rate=25, fmax=8000.0, griffin_lim_iters=32)
DB_PER_NEPER = 10.0 / np.log(10.0)  # mel25 latents are ln(power): nepers -> dB


def harmonic(frequency: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    """A tone with three decaying harmonics, float32."""
    time = np.arange(round(seconds * rate)) / rate
    partials = sum(amplitude / k * np.sin(2 * np.pi * k * frequency * time + k) for k in (1, 2, 3))
    return partials.astype(np.float32)


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> None:
    """Equal shapes and values within `tolerance` of the expected array's largest value."""
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0 and np.abs(actual - expected).max() <= tolerance * scale


def corpus_clips(seconds: float, count: int = 2) -> list[np.ndarray]:
    """Windows of rendered corpus tracks (the embedded profile's audio), 16 kHz."""
    clips = []
    for index in range(count):
        spec = sample_track_spec("t", np.random.default_rng([11, index]), 6.0, 8.0, 1, 2)
        audio = render(spec, MEL25.sample_rate)
        clips.append(audio[MEL25.sample_rate : MEL25.sample_rate + round(seconds * 16000)])
    return clips


@pytest.fixture(scope="module")
def mel25() -> Mel25Codec:
    codec = load_codec(BackendChoice(name="mel25", path=None), MEL25)
    assert isinstance(codec, Mel25Codec)
    return codec


# --------------------------------------------------------------------------- mel25
def test_mel25_has_the_ace_step_latent_shape(mel25):
    assert isinstance(mel25, CodecBackend)
    assert (mel25.sample_rate, mel25.frame_rate, mel25.latent_dim) == (16000, 25.0, 64)
    assert mel25.grid == (1, 64)
    latents = mel25.encode([harmonic(220, 10.0, 16000), harmonic(330, 10.0, 16000)], 16000)
    # paper 000 §III-A (25 Hz) and Table II (64 channels x 250 frames)
    assert latents.shape == (2, 250, 64) and latents.dtype == np.float32
    assert latents.reshape(2, 250, *mel25.grid).shape == (2, 250, 1, 64)


def test_mel25_resamples_its_input(mel25):
    at_16k = mel25.encode([harmonic(440, 2.0, 16000)], 16000)
    at_48k = mel25.encode([harmonic(440, 2.0, 48000)], 48000)
    assert at_48k.shape == at_16k.shape == (1, 50, 64)
    loud = at_16k > at_16k.max() - 40 / DB_PER_NEPER
    assert np.abs(at_48k - at_16k)[loud].mean() * DB_PER_NEPER < 0.5


def test_mel25_takes_the_log_of_power_and_finds_the_pitch(mel25):
    quiet, loud = (mel25.encode([harmonic(440, 2.0, 16000, a)], 16000)[0] for a in (0.1, 0.2))
    above_floor = quiet > np.log(MEL25_POWER_FLOOR) + 1.0
    assert above_floor.mean() > 0.5
    # power: doubling the amplitude adds 2 ln 2 (magnitude would add ln 2)
    assert np.allclose((loud - quiet)[above_floor], 2 * np.log(2.0), atol=1e-3)
    centres = librosa.mel_frequencies(n_mels=66, fmin=0.0, fmax=MEL25.fmax)[1:-1]
    peak_band = int(quiet.mean(0).argmax())
    assert abs(centres[peak_band] - 440) < 60  # the band holding the fundamental


def test_mel25_silence_sits_on_the_floor(mel25):
    latents = mel25.encode([np.zeros(16000, np.float32)], 16000)
    assert np.allclose(latents, np.log(MEL25_POWER_FLOOR))


def test_mel25_frames_follow_the_audio_by_whole_hops(mel25):
    hop = 16000 // 25
    clip = corpus_clips(3.0, count=1)[0]
    shifted = np.concatenate([np.zeros(hop, np.float32), clip[:-hop]])
    original, delayed = mel25.encode([clip, shifted], 16000)
    # away from the edges (reflect padding, the zeros), frame k + 1 of the delayed clip is
    # frame k of the original: frames are centred on multiples of the hop
    assert np.abs(delayed[5:-3] - original[4:-4]).max() < 1e-3


def test_mel25_round_trip_stays_close_on_corpus_audio(mel25):
    clips = corpus_clips(4.0)
    latents = mel25.encode(clips, 16000)
    audio = mel25.decode(latents)
    assert audio.shape == (2, 100 * 640) and audio.dtype == np.float32
    again = mel25.encode(list(audio), 16000)
    error_db = np.abs(again - latents) * DB_PER_NEPER
    # bins within 60 dB of each clip's loudest carry the music; below that, Griffin-Lim's
    # phase-inconsistency noise (inaudible) dominates: bound the median there instead.
    loud = latents > latents.max(axis=(1, 2), keepdims=True) - 60 / DB_PER_NEPER
    assert error_db[loud].mean() < 1.5, error_db[loud].mean()  # measured 0.74 dB
    assert np.median(error_db) < 0.5, np.median(error_db)  # measured 0.21 dB
    level_db = [20 * np.log10(np.std(a) / np.std(c)) for a, c in zip(audio, clips, strict=True)]
    assert np.abs(level_db).max() < 1.0, level_db  # power mels keep the loudness


def test_nnls_mel_inverse_fits_the_mel_with_a_non_negative_spectrum(mel25):
    filterbank = mel25.front_end.filterbank.double()
    generator = torch.Generator().manual_seed(0)
    spectrum = torch.rand(filterbank.shape[1], 20, generator=generator, dtype=torch.float64)
    mel = filterbank @ spectrum**4  # peaky spectra, as harmonics make them
    solved = nnls_mel_inverse(mel, filterbank, MEL_INVERSION_ITERS)
    assert solved.shape == spectrum.shape and bool((solved >= 0).all())
    residual = torch.linalg.norm(filterbank @ solved - mel) / torch.linalg.norm(mel)
    assert residual < 1e-4  # measured 5e-8
    # the clamped pseudo-inverse the updates start from is ~1 % off
    start = torch.clamp(torch.linalg.pinv(filterbank) @ mel, min=0.0)
    assert torch.linalg.norm(filterbank @ start - mel) / torch.linalg.norm(mel) > 1e-3


def test_griffin_lim_recovers_a_signal_with_the_given_magnitude(mel25):
    front_end = mel25.front_end
    clip = torch.from_numpy(corpus_clips(2.0, count=1)[0]).double()
    stft = {"n_fft": 2048, "hop_length": 640, "window": front_end.window.double()}
    magnitude = torch.stft(clip, **stft, pad_mode="reflect", return_complex=True).abs()

    def inconsistency(iters: int) -> float:
        audio = griffin_lim(magnitude, front_end, iters)
        assert audio.shape == clip.shape  # 50 frames + 1 -> 50 * 640 samples
        rebuilt = torch.stft(audio, **stft, pad_mode="reflect", return_complex=True).abs()
        return float(torch.linalg.norm(rebuilt - magnitude) / torch.linalg.norm(magnitude))

    assert inconsistency(0) > 0.5  # zero phase alone (measured 0.88)
    assert inconsistency(32) < 0.15  # measured 0.115


def test_mel25_decode_is_deterministic_and_batch_independent(mel25):
    """Griffin-Lim turns any rounding difference into another waveform: a clip's audio must
    not depend on its batch (a lone clip included) or on the thread count."""
    latents = mel25.encode(corpus_clips(1.0, count=3), 16000)
    batch = mel25.decode(latents)
    assert np.array_equal(mel25.decode(latents[1:]), batch[1:])
    assert np.array_equal(mel25.decode(latents[2:]), batch[2:])
    assert np.array_equal(mel25.decode(latents), batch)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert np.array_equal(mel25.decode(latents), batch)
    finally:
        torch.set_num_threads(threads)


def test_mel25_refuses_bad_input(mel25):
    with pytest.raises(ValueError, match="one length"):
        mel25.encode([np.zeros(16000, np.float32), np.zeros(8000, np.float32)], 16000)
    with pytest.raises(ValueError, match="latents"):
        mel25.decode(np.zeros((1, 10, 32), np.float32))
    with pytest.raises(ValueError, match="frame_rate"):
        Mel25Codec(MEL25.model_copy(update={"frame_rate": 24}))


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("name", ["ace-step", "audioldm2"])
def test_checkpoint_codecs_need_their_path(name, tmp_path):
    for path in (None, str(tmp_path / "absent")):
        with pytest.raises(BackendUnavailable, match=r"backends\.codec\.path"):
            load_codec(BackendChoice(name=name, path=path), MEL25)


def test_unknown_codec_names_the_params_key():
    with pytest.raises(ValueError, match=r"backends\.codec\.name.*ace-step, audioldm2, mel25"):
        load_codec(BackendChoice(name="encodec", path=None), MEL25)


def test_codec_identity_records_what_shapes_the_cache(tmp_path):
    identity = codec_identity(BackendChoice(name="mel25", path=None), MEL25)
    assert identity["n_fft"] == 2048 and identity["hop_length"] == 640
    assert (identity["power"], identity["floor"]) == (2.0, MEL25_POWER_FLOOR)
    save_tiny_oobleck(tmp_path / "ace" / "vae")
    (tmp_path / "ace" / "dit.safetensors").write_bytes(b"not hashed")
    ace = codec_identity(BackendChoice(name="ace-step", path=str(tmp_path / "ace")), MEL25)
    assert ace["vae"]["path"] == str(tmp_path / "ace" / "vae") and len(ace["vae"]["sha256"]) == 64
    save_tiny_audioldm2(tmp_path / "ldm")
    ldm = codec_identity(BackendChoice(name="audioldm2", path=str(tmp_path / "ldm")), MEL25)
    assert ldm["vae"]["sha256"] != ldm["vocoder"]["sha256"]
    with pytest.raises(BackendUnavailable, match=r"backends\.codec\.path"):
        codec_identity(BackendChoice(name="audioldm2", path=None), MEL25)
    with pytest.raises(ValueError, match=r"backends\.codec\.name"):
        codec_identity(BackendChoice(name="encodec", path=None), MEL25)


# --------------------------------------------------------------------------- ace-step
def save_tiny_oobleck(directory: Path, seed: int = 0) -> AutoencoderOobleck:
    """ACE-Step's VAE class and layout (48 kHz stereo) at toy size: hop 2 * 2 = 4 samples."""
    torch.manual_seed(seed)
    vae = AutoencoderOobleck(
        encoder_hidden_size=8,
        downsampling_ratios=[2, 2],
        channel_multiples=[1, 2],
        decoder_channels=8,
        decoder_input_channels=4,
        audio_channels=2,
        sampling_rate=48000,
    ).eval()
    vae.save_pretrained(directory)
    return vae


@pytest.fixture(scope="module")
def oobleck(tmp_path_factory) -> tuple[OobleckCodec, AutoencoderOobleck]:
    checkpoint = tmp_path_factory.mktemp("ace_step")  # an ACE-Step dir holding vae/
    reference = save_tiny_oobleck(checkpoint / "vae")
    codec = load_codec(BackendChoice(name="ace-step", path=str(checkpoint)), MEL25)
    assert isinstance(codec, OobleckCodec)
    return codec, reference


def test_ace_step_reads_rate_and_size_from_the_config(oobleck):
    codec, _ = oobleck
    assert isinstance(codec, CodecBackend)
    assert (codec.sample_rate, codec.hop_length, codec.frame_rate) == (48000, 4, 12000.0)
    assert (codec.latent_dim, codec.grid) == (4, (1, 4))


def test_ace_step_encodes_the_posterior_mean_of_duplicated_mono(oobleck):
    codec, reference = oobleck
    clips = [harmonic(300, 0.05, 16000), harmonic(500, 0.05, 16000)]  # 16 kHz in
    latents = codec.encode(clips, 16000)
    assert latents.shape == (2, 600, 4) and latents.dtype == np.float32  # 2400 samples / 4
    stereo = torch.from_numpy(np.stack([resample(c, 16000, 48000) for c in clips]))
    stereo = stereo[:, None].repeat(1, 2, 1)
    with torch.no_grad():
        expected = reference.encode(stereo).latent_dist.mean.transpose(1, 2).numpy()
    assert_close(latents, expected)
    assert np.array_equal(codec.encode(clips, 16000), latents)  # the mean: no sampling


def test_ace_step_drops_a_tail_shorter_than_one_hop(oobleck):
    codec, _ = oobleck
    full = harmonic(200, 0.01, 48000)  # 480 samples
    latents = codec.encode([np.concatenate([full, full[:3]])], 48000)
    assert_close(latents, codec.encode([full], 48000))
    assert latents.shape == (1, 120, 4)


def test_ace_step_decodes_stereo_to_mono(oobleck):
    codec, reference = oobleck
    latents = codec.encode([harmonic(300, 0.01, 48000)] * 3, 48000)
    audio = codec.decode(latents)
    assert audio.shape == (3, 120 * 4) and audio.dtype == np.float32
    with torch.no_grad():
        stereo = reference.decode(torch.from_numpy(latents).transpose(1, 2)).sample
    assert stereo.shape == (3, 2, 480)
    assert not torch.allclose(stereo[:, 0], stereo[:, 1])  # so the mean is a real choice
    assert_close(audio, stereo.mean(1).numpy())


def test_ace_step_refuses_pickled_weights(tmp_path):
    torch.manual_seed(0)
    AutoencoderOobleck(
        encoder_hidden_size=8,
        downsampling_ratios=[2],
        channel_multiples=[1],
        decoder_channels=8,
        decoder_input_channels=4,
    ).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(OSError, match="safetensors"):
        load_codec(BackendChoice(name="ace-step", path=str(tmp_path)), MEL25)


# --------------------------------------------------------------------------- audioldm2
def save_tiny_audioldm2(directory: Path, seed: int = 0) -> tuple[AutoencoderKL, SpeechT5HifiGan]:
    """An AudioLDM2 pipeline directory's vae/ + vocoder/: 2x down, 2 latent channels, hop 160."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
    ).eval()
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=64,
            sampling_rate=16000,
            upsample_initial_channel=16,
            upsample_rates=[4, 5, 8],
            upsample_kernel_sizes=[8, 10, 16],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1]],
            normalize_before=False,
        )
    ).eval()
    vae.save_pretrained(directory / "vae")
    vocoder.save_pretrained(directory / "vocoder")
    return vae, vocoder


@pytest.fixture(scope="module")
def audioldm2(tmp_path_factory) -> tuple[AudioLdm2Codec, AutoencoderKL, SpeechT5HifiGan]:
    directory = tmp_path_factory.mktemp("audioldm2")
    vae, vocoder = save_tiny_audioldm2(directory)
    codec = load_codec(BackendChoice(name="audioldm2", path=str(directory)), MEL25)
    assert isinstance(codec, AudioLdm2Codec)
    return codec, vae, vocoder


def audioldm_reference_mel(audio: np.ndarray) -> np.ndarray:
    """QA-MDT's `mel_spectrogram_train` in numpy: [frames, 64] = ln(clamp(mel |STFT|, 1e-5))."""
    hop = 160
    padding = (AUDIOLDM_N_FFT - hop) // 2
    padded = np.pad(audio, padding, mode="reflect")
    magnitude = np.abs(
        librosa.stft(padded, n_fft=AUDIOLDM_N_FFT, hop_length=hop, window="hann", center=False)
    )
    basis = librosa.filters.mel(sr=16000, n_fft=AUDIOLDM_N_FFT, n_mels=64, fmin=0.0, fmax=8000.0)
    return np.log(np.clip(basis @ magnitude, 1e-5, None)).T


def test_audioldm2_geometry_comes_from_vae_and_vocoder(audioldm2):
    codec, _, _ = audioldm2
    assert isinstance(codec, CodecBackend)
    assert codec.sample_rate == 16000 and codec.front_end.hop_length == 160
    assert codec.front_end.f_max == AUDIOLDM_F_MAX
    assert codec.frame_rate == 50.0  # 100 Hz mels, 2x down (the real 4x VAE: 25 Hz)
    assert codec.grid == (2, 32) and codec.latent_dim == 64


def test_audioldm2_front_end_is_qa_mdts_mel(audioldm2):
    codec, _, _ = audioldm2
    clip = corpus_clips(1.0, count=1)[0]
    ours = log_mel(torch.from_numpy(clip[None]), codec.front_end)[0].numpy()
    reference = audioldm_reference_mel(clip)
    assert ours.shape == reference.shape == (100, 64)  # exactly samples // hop frames
    assert np.abs(ours - reference).max() < 5e-3  # nepers of magnitude: < 0.05 dB


def test_audioldm2_latents_are_the_scaled_vae_mean_time_major(audioldm2):
    codec, vae, _ = audioldm2
    clips = [harmonic(330, 0.53, 16000), harmonic(550, 0.53, 16000)]  # 8480 samples: 53 mels
    latents = codec.encode(clips, 16000)
    assert latents.shape == (2, 26, 64) and latents.dtype == np.float32  # 52 mels / 2
    mels = np.stack([audioldm_reference_mel(c)[:52] for c in clips])  # [2, 52, 64]
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(mels)[:, None].float()).latent_dist
    expected = (posterior.mean * 0.5).numpy()  # [N, C, T', F'], scaling_factor 0.5
    # the 2-D view of the cached array is the VAE's layout with time first
    grid_view = latents.reshape(2, 26, *codec.grid).transpose(0, 2, 1, 3)
    assert_close(grid_view, expected, tolerance=1e-3)  # float32 vs librosa's float64 STFT


def test_audioldm2_decodes_through_vae_and_vocoder(audioldm2):
    codec, vae, vocoder = audioldm2
    latents = codec.encode([harmonic(330, 0.4, 16000)], 16000)
    audio = codec.decode(latents)
    assert audio.shape == (1, latents.shape[1] * 2 * 160) and audio.dtype == np.float32
    image = torch.from_numpy(latents).reshape(1, -1, 2, 32).permute(0, 2, 1, 3) / 0.5
    with torch.no_grad():
        expected = vocoder(vae.decode(image).sample.squeeze(1)).numpy()
    # kernel 10 at rate 5 overshoots by 8 samples, like the real vocoder's 16 at 5
    assert expected.shape[1] == audio.shape[1] + 8
    assert_close(audio, expected[:, : audio.shape[1]])


def test_audioldm2_needs_both_subfolders(tmp_path):
    save_tiny_audioldm2(tmp_path)
    (tmp_path / "vocoder" / "config.json").unlink()
    with pytest.raises(BackendUnavailable, match=r"backends\.codec\.path.*vae/ and vocoder/"):
        load_codec(BackendChoice(name="audioldm2", path=str(tmp_path)), MEL25)


def test_audioldm2_refuses_models_of_another_front_end(audioldm2):
    _, vae, vocoder = audioldm2
    other_rate = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(**{**vocoder.config.to_dict(), "sampling_rate": 24000})
    )
    with pytest.raises(ValueError, match="16000 Hz mel front end"):
        AudioLdm2Codec(vae, other_rate)
    stereo_vae = AutoencoderKL(in_channels=2, block_out_channels=(8,), norm_num_groups=4)
    with pytest.raises(ValueError, match="1-channel mels"):
        AudioLdm2Codec(stereo_vae, vocoder)
