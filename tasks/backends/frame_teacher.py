"""Frame-teacher backends (`backends.frame_teacher`): `muq` (paper scale) and `embedded`.

`muq` is MuQ (docs/reference.md §F.2): mono 24 kHz in, `last_hidden_state` [N, frames, 1024]
at 25 Hz out (MuQConfig label_rate 25, encoder_dim 1024), the features paper 000 aligns
the DiT to with REPA (eq. (5)). `MuqFrameTeacher` wraps any module with MuQ's forward
signature and output type; `load_muq` builds it from the real package and checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tasks.backends.base import (
    FrameTeacherBackend,
    Registry,
    require_package,
    require_path,
    stack_clips,
)
from tasks.backends.embedded import EmbeddedFrameTeacher, load_checkpoint
from tasks.params import BackendChoice

FRAME_TEACHERS: Registry[FrameTeacherBackend] = Registry("frame_teacher")

MUQ_SAMPLE_RATE = 24_000  # docs/reference.md §F.2: MuQ takes mono 24 kHz waveforms
MUQ_LABEL_RATE = 25  # MuQConfig.label_rate default: one feature vector per 40 ms
MUQ_ENCODER_DIM = 1024  # MuQConfig.encoder_dim default
MUQ_WHY = (
    "MuQ (`from muq import MuQ`) is not installable here: it needs torchaudio, which has no "
    "build for this torch, and imports `transformers.deepspeed`, removed in transformers 5. "
    "Run the `muq` frame teacher where `pip install muq` works, or select `embedded`."
)


def _config_value(config: Any, name: str, default: int) -> int:
    """A MuQConfig field; `MuQ.config` is a dataclass, or a dict in some saved copies."""
    if isinstance(config, dict):
        return int(config.get(name, default))
    return int(getattr(config, name, default))


class MuqFrameTeacher:
    """MuQ's last hidden state as frame features: resampling, batching, shape, dtype.

    The whole batch goes through one forward: clips of one length, stacked [N, T] at
    24 kHz (`stack_clips`), so no attention mask is needed (MuQ's own README usage).
    """

    sample_rate = MUQ_SAMPLE_RATE

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        config = getattr(model, "config", None)
        self.frame_rate = float(_config_value(config, "label_rate", MUQ_LABEL_RATE))
        self.dim = _config_value(config, "encoder_dim", MUQ_ENCODER_DIM)

    @torch.inference_mode()
    def features(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, frames, dim] float32, frames at `frame_rate` Hz (25 for MuQ)."""
        wavs = torch.from_numpy(stack_clips(waveforms, sample_rate, self.sample_rate))
        output = self.model(wavs, output_hidden_states=False)
        hidden = output.last_hidden_state
        if hidden.ndim != 3 or hidden.shape[0] != wavs.shape[0] or hidden.shape[-1] != self.dim:
            raise ValueError(
                f"MuQ returned last_hidden_state {tuple(hidden.shape)}; expected "
                f"[{wavs.shape[0]}, frames, {self.dim}]"
            )
        return hidden.float().numpy().astype(np.float32, copy=False)


def load_muq(path: str | None, key: str) -> MuqFrameTeacher:
    """`MuQ.from_pretrained(local_dir)`: config.json + model.safetensors, never a pickle.

    `PyTorchModelHubMixin` reads `model.safetensors` from a local directory; requiring that
    file first rules out any fallback to a pickled `pytorch_model.bin`.
    """
    require_package("muq", key, MUQ_WHY)
    what = "MuQ directory (e.g. a copy of OpenMuQ/MuQ-large-msd-iter: config.json + safetensors)"
    directory = require_path(path, key, what)
    for name in ("config.json", "model.safetensors"):
        require_path(directory / name, key, what)
    from muq import MuQ

    model = MuQ.from_pretrained(str(directory), local_files_only=True)
    return MuqFrameTeacher(model)


@FRAME_TEACHERS.register("embedded")
def _embedded(choice: BackendChoice, key: str) -> FrameTeacherBackend:
    model, _ = load_checkpoint(choice.path, key, "tiny_clap")
    return EmbeddedFrameTeacher(model)


@FRAME_TEACHERS.register("muq")
def _muq(choice: BackendChoice, key: str) -> FrameTeacherBackend:
    return load_muq(choice.path, key)


def load_frame_teacher(choice: BackendChoice) -> FrameTeacherBackend:
    return FRAME_TEACHERS.load(choice)
