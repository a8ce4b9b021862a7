"""tasks/backends/quality.py `pmos` and tasks/backends/frame_teacher.py `muq`.

`pmos`: a tiny random `Wav2Vec2ForSequenceClassification` (one regression output) and its
`Wav2Vec2FeatureExtractor`, saved with save_pretrained, loaded through the registry.

`muq`: the real round trip (MuQ.from_pretrained on a saved MuQ) cannot run here, because
the `muq` package cannot be installed in this environment: it needs torchaudio, which has
no build for the installed torch, and it imports `transformers.deepspeed`, which
transformers 5 removed. So the loader is tested for the error it must raise, and the
`MuqFrameTeacher` wrapper (resampling, batching, output shape, dtype, frame rate) is tested
with a stand-in module that has MuQ's `forward(x, attention_mask=None,
output_hidden_states=True) -> BaseModelOutput` signature and a 25 Hz output for 24 kHz input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_outputs import BaseModelOutput

from tasks.backends.base import (
    BackendUnavailable,
    FrameTeacherBackend,
    QualityBackend,
    resample,
)
from tasks.backends.frame_teacher import MuqFrameTeacher, load_frame_teacher
from tasks.backends.quality import PmosPredictor, load_quality
from tasks.params import BackendChoice


# --------------------------------------------------------------------------- pmos
@pytest.fixture(scope="module")
def pmos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pmos-tiny")
    config = transformers.Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8, 8),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=16,
        num_labels=1,
        problem_type="regression",
    )
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForSequenceClassification(config)
    with torch.no_grad():  # a head whose output varies visibly with the input
        model.classifier.weight.normal_(0.0, 5.0)
    model.save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=False
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pmos(pmos_dir: Path) -> PmosPredictor:
    backend = load_quality(BackendChoice(name="pmos", path=str(pmos_dir)))
    assert isinstance(backend, PmosPredictor)
    return backend


def noise(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * sample_rate))).astype(np.float32)


def by_hand(pmos_dir: Path, clip_16k: np.ndarray) -> float:
    """The saved model run directly on one 16 kHz clip (no feature-extractor changes)."""
    model = transformers.AutoModelForAudioClassification.from_pretrained(
        pmos_dir, use_safetensors=True
    ).eval()
    with torch.no_grad():
        return float(model(torch.from_numpy(clip_16k)[None]).logits[0, 0])


def test_pmos_scores_from_48_khz_input(pmos: PmosPredictor, pmos_dir: Path) -> None:
    assert isinstance(pmos, QualityBackend)
    assert pmos.sample_rate == 16_000  # the feature extractor's sampling_rate
    clips = [noise(1.0, 48_000, seed) for seed in range(3)]
    scores = pmos.predict(clips, 48_000)
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert np.ptp(scores) > 1e-3  # the scores depend on the clip
    expected = by_hand(pmos_dir, resample(clips[1], 48_000, 16_000))
    assert scores[1] == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(pmos.predict(clips[1:2], 48_000), scores[1:2], atol=1e-5)


def test_pmos_batches_clips_of_different_lengths(pmos: PmosPredictor) -> None:
    """Ragged batches run as equal-length groups: no padding ever reaches the model."""
    clips = [noise(1.0, 16_000, 0), noise(0.5, 16_000, 1), noise(1.0, 16_000, 2)]
    together = pmos.predict(clips, 16_000)
    alone = np.concatenate([pmos.predict([clip], 16_000) for clip in clips])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    with pytest.raises(ValueError, match="empty batch"):
        pmos.predict([], 16_000)
    with pytest.raises(ValueError, match="mono"):
        pmos.predict([np.zeros((2, 16_000), np.float32)], 16_000)


def test_pmos_refuses_a_multi_output_head(pmos_dir: Path) -> None:
    config = transformers.Wav2Vec2Config.from_pretrained(pmos_dir)
    config.num_labels = 5
    model = transformers.Wav2Vec2ForSequenceClassification(config)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(pmos_dir)
    with pytest.raises(ValueError, match="num_labels=5"):
        PmosPredictor(model, extractor)


def test_pmos_missing_path_names_the_key(tmp_path: Path) -> None:
    for path in (None, str(tmp_path / "absent"), str(tmp_path)):
        with pytest.raises(BackendUnavailable, match=r"backends\.quality\.path"):
            load_quality(BackendChoice(name="pmos", path=path))


# --------------------------------------------------------------------------- muq
@dataclass
class StandInMuqConfig:
    """The MuQConfig fields the wrapper reads (MuQ's defaults are 25 and 1024)."""

    label_rate: int = 25
    encoder_dim: int = 12


class StandInMuq(torch.nn.Module):
    """MuQ's interface: (B, T) at 24 kHz -> BaseModelOutput, last_hidden_state (B, T/960, D).

    Frames are 40 ms windows (960 samples) projected to `encoder_dim`, so each feature
    depends only on its own window and the test can check time alignment.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = StandInMuqConfig()
        self.proj = torch.nn.Linear(960, self.config.encoder_dim)
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = True,
    ) -> BaseModelOutput:
        self.calls.append((tuple(x.shape), output_hidden_states))
        frames = x.shape[1] // 960
        hidden = self.proj(x[:, : frames * 960].reshape(x.shape[0], frames, 960))
        return BaseModelOutput(
            last_hidden_state=hidden, hidden_states=(hidden,) if output_hidden_states else None
        )


def test_muq_wrapper_resamples_batches_and_reports_25_hz() -> None:
    torch.manual_seed(0)
    stand_in = StandInMuq()
    teacher = MuqFrameTeacher(stand_in)
    assert isinstance(teacher, FrameTeacherBackend)
    assert (teacher.sample_rate, teacher.frame_rate, teacher.dim) == (24_000, 25.0, 12)
    clips = [noise(2.0, 48_000, seed) for seed in range(3)]
    features = teacher.features(clips, 48_000)
    assert features.shape == (3, 50, 12) and features.dtype == np.float32
    assert stand_in.calls == [((3, 48_000), False)]  # one batch, 24 kHz, last layer only
    with torch.no_grad():
        expected = stand_in(torch.from_numpy(resample(clips[2], 48_000, 24_000))[None])
    np.testing.assert_allclose(features[2], expected.last_hidden_state[0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="one length"):
        teacher.features([clips[0], clips[1][:1000]], 48_000)


def test_muq_wrapper_checks_the_output_width() -> None:
    stand_in = StandInMuq()
    stand_in.config = StandInMuqConfig(encoder_dim=1024)  # claims MuQ-large's width
    with pytest.raises(ValueError, match="last_hidden_state"):
        MuqFrameTeacher(stand_in).features([noise(1.0, 24_000, 0)], 24_000)


def test_selecting_muq_here_names_the_key_and_the_package(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        load_frame_teacher(BackendChoice(name="muq", path=str(tmp_path)))
    message = str(caught.value)
    assert "backends.frame_teacher" in message
    assert "`muq` package" in message
    assert "torchaudio" in message
