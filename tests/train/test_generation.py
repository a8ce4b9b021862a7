"""Generation: quality-aware conditions, guided sampling through the backbone, best-of-n."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.fluxaudio import FluxAudio
from tasks.backends.mel_codec import Mel25Codec
from tasks.common.generation import generate_audio, generate_latents, quality_levels
from tasks.params import Params, SampleParams, merge, read_yaml
from tests.conftest import REPO
from tests.models.test_fluxaudio import TINY, randomised


def _params(**quality) -> Params:
    raw = merge(read_yaml(REPO / "params.yaml"), {"quality": quality})
    return Params.from_mapping(raw)


def test_quality_aware_guidance_levels() -> None:
    """Paper 003 eq. (7): requested level against the fixed unconditional one, when set."""
    fixed = _params(inference_level=5, unconditional_level=3).quality
    conditional, unconditional = quality_levels(fixed, 2)
    assert conditional.tolist() == [5, 5] and unconditional.tolist() == [3, 3]
    same = _params(inference_level=4, unconditional_level=None).quality
    assert quality_levels(same, 1)[1].tolist() == [4]


def _conditions(batch: int) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(0)
    condition = {
        "text": torch.randn(batch, TINY.text_seq_len, TINY.text_dim, generator=generator),
        "clap_text": torch.randn(batch, TINY.condition_dim, generator=generator),
        "quality_level": torch.full((batch,), 5),
    }
    null = {
        "text": torch.zeros(batch, TINY.text_seq_len, TINY.text_dim),
        "clap_text": torch.zeros(batch, TINY.condition_dim),
        "quality_level": torch.full((batch,), 3),
    }
    return condition, null


def _sample(**overrides) -> SampleParams:
    base = {"solver": "euler", "steps": 3, "cfg_scale": 3.5, "best_of": 1}
    return SampleParams(**{**base, **overrides})


def test_generation_is_seeded_and_denormalised() -> None:
    model = randomised(TINY)
    with torch.no_grad():
        model.set_latent_stats(torch.full((TINY.latent_dim,), -4.0), torch.full((8,), 0.5))
    condition, null = _conditions(2)
    runs = [
        generate_latents(model, condition, null, 16, _sample(), torch.Generator().manual_seed(1))
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1])
    assert runs[0].shape == (2, 16, TINY.latent_dim)
    zero_model = FluxAudio(TINY)  # v = 0: the sample is the noise itself, denormalised
    zero_model.set_latent_stats(torch.full((8,), -4.0), torch.full((8,), 0.5))
    noise = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))
    sampled = generate_latents(
        zero_model, condition, null, 16, _sample(), torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(sampled, noise * 0.5 - 4.0)


class LoudnessClap:
    """A scorer whose score is the clip's RMS: enough to check which candidate is kept."""

    sample_rate = 16_000
    embedding_dim = 2

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        rms = np.array([np.sqrt(np.mean(w**2)) for w in waveforms])
        return np.stack([rms, np.ones_like(rms)], axis=1).astype(np.float32)

    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(captions), 1))


def test_best_of_n_keeps_the_best_candidate_per_prompt() -> None:
    """QA-MDT's reranking (docs/reference.md §C.4): per prompt, the highest-scoring candidate."""
    params = read_yaml(REPO / "params.yaml")
    codec = Mel25Codec(Params.from_mapping(params).latents.mel25)
    model = randomised(replace(TINY, latent_dim=codec.latent_dim))
    condition, null = _conditions(3)
    prompts = ["a", "b", "c"]
    clap = LoudnessClap()
    shared = dict(condition=condition, null_condition=null, prompts=prompts, frames=8, codec=codec)
    singles = []
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        _, score = generate_audio(model, **shared, sample=_sample(), clap=clap, generator=generator)
        singles.append(score)
    best_audio, best = generate_audio(
        model,
        **shared,
        sample=_sample(best_of=3),
        clap=clap,
        generator=torch.Generator().manual_seed(4),
    )
    np.testing.assert_allclose(best, np.max(singles, axis=0), rtol=1e-5)
    assert best_audio.shape[0] == 3
    with pytest.raises(ValueError, match=r"backends\.clap"):
        generate_audio(model, **shared, sample=_sample(best_of=2), clap=None, generator=generator)
