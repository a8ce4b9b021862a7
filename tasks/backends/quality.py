"""Quality backends (`backends.quality`): `pmos` (paper scale) and `embedded`.

`pmos` is any transformers audio model with a one-output regression head, read from a
local save_pretrained directory with `AutoModelForAudioClassification` and
`AutoFeatureExtractor` (safetensors only, no pickle).

Paper 003 §4.1 scores training audio with Ragano et al.'s wav2vec2 p-MOS model fine-tuned
on vinyl recordings (QAMA, `alessandroragano/music-archive-quality-prediction`, ICASSP 2023;
docs/reference.md §C.3; which of its 4 checkpoints QA-MDT used is unknown). QAMA ships as
fairseq `.pt` files (a 768-d wav2vec2 SSL checkpoint + `QAMA` heads, `mos_predictors.py`)
and must be exported to this format once, outside this project:
* the fairseq wav2vec2 -> `Wav2Vec2Model` (transformers' own conversion script);
* QAMA 'arch1' = mean over time of the last transformer layer, then Linear(768, 1). In
  `Wav2Vec2ForSequenceClassification` (projector -> mean pool -> classifier) that is
  `classifier_proj_size=768`, projector = identity, classifier = QAMA's output layer,
  `num_labels=1`, `problem_type="regression"` (mean and linear maps commute);
* a `Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False)`: QAMA feeds raw
  16 kHz waveforms (`predict.py`) with no normalisation.
QAMA's "Mean CV" averages its 3 folds; one directory is one model here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tasks.backends.base import QualityBackend, Registry, require_path, resample
from tasks.backends.embedded import EmbeddedQuality, load_checkpoint
from tasks.params import BackendChoice

QUALITY_BACKENDS: Registry[QualityBackend] = Registry("quality")


def _groups_by_length(clips: Sequence[np.ndarray]) -> dict[int, list[int]]:
    """Clip indices keyed by length: each group runs as one batch with no padding at all.

    Padding would change a wav2vec2-base's output (its group-norm feature encoder was not
    trained with attention masks), and QAMA scores each file whole and alone (`predict.py`).
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for index, clip in enumerate(clips):
        groups[clip.shape[0]].append(index)
    return dict(groups)


class PmosPredictor:
    """A one-output audio regressor + its feature extractor: one p-MOS per clip."""

    def __init__(self, model: torch.nn.Module, feature_extractor: Any) -> None:
        config: Any = model.config  # a transformers config, not an nn.Module attribute
        if int(config.num_labels) != 1:
            raise ValueError(
                f"a p-MOS model has one regression output, this one has "
                f"num_labels={config.num_labels}"
            )
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)

    def _clips(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        if len(waveforms) == 0:
            raise ValueError("empty batch")
        clips = [np.asarray(w, dtype=np.float32) for w in waveforms]
        if any(c.ndim != 1 or c.size == 0 for c in clips):
            raise ValueError("expected non-empty mono clips of shape (T,)")
        return [resample(c, sample_rate, self.sample_rate) for c in clips]

    @torch.inference_mode()
    def predict(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N] float32; clips of one length share a forward pass, others run separately."""
        clips = self._clips(waveforms, sample_rate)
        scores = np.empty(len(clips), dtype=np.float32)
        for indices in _groups_by_length(clips).values():
            inputs = self.feature_extractor(
                [clips[i] for i in indices], sampling_rate=self.sample_rate, return_tensors="pt"
            )
            # equal lengths: the mask would be all ones, and base wav2vec2s must not get one
            inputs.pop("attention_mask", None)
            logits = self.model(**inputs).logits
            scores[indices] = logits.reshape(len(indices)).float().numpy()
        return scores


def load_pmos(path: str | None, key: str) -> PmosPredictor:
    """`AutoModelForAudioClassification` + `AutoFeatureExtractor` from a local directory."""
    import transformers

    what = "p-MOS model directory (transformers save_pretrained, one regression output)"
    directory = require_path(path, key, what)
    require_path(directory / "config.json", key, what)
    model = transformers.AutoModelForAudioClassification.from_pretrained(
        directory, local_files_only=True, use_safetensors=True
    )
    extractor = transformers.AutoFeatureExtractor.from_pretrained(directory, local_files_only=True)
    return PmosPredictor(model, extractor)


@QUALITY_BACKENDS.register("embedded")
def _embedded(choice: BackendChoice, key: str) -> QualityBackend:
    model, _ = load_checkpoint(choice.path, key, "quality")
    return EmbeddedQuality(model)


@QUALITY_BACKENDS.register("pmos")
def _pmos(choice: BackendChoice, key: str) -> QualityBackend:
    return load_pmos(choice.path, key)


def load_quality(choice: BackendChoice) -> QualityBackend:
    return QUALITY_BACKENDS.load(choice)
