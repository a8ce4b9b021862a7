"""tasks/backends/laion_clap_loader.py: LAION-CLAP model code without torchvision or the hub.

A tiny random RoBERTa (hidden size 768, because CLAP's text projection hard-codes
`nn.Linear(768, 512)`) and a tiny byte-level BPE tokenizer stand in for roberta-base; the
audio branch is the real HTSAT-tiny architecture with random weights. CPU only, no network.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from tasks.backends import laion_clap_loader as loader
from tests.tiny_models import save_tiny_roberta

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # laion's htsat.py

CAPTIONS = ["a calm piano melody", "loud drums and distorted electric guitar"]


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained RoBERTa directory (model + tokenizer), tiny and random."""
    return save_tiny_roberta(tmp_path_factory.mktemp("roberta-tiny"))


@pytest.fixture(scope="module")
def clap(text_model_dir: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    return loader.build_clap_model(amodel="HTSAT-tiny", text_model_dir=text_model_dir)


def _embed(model: torch.nn.Module, text_model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    audio = torch.rand(2, loader.CLAP_CLIP_SAMPLES, generator=torch.Generator().manual_seed(1))
    tokens = loader.tokenize_captions(loader.load_clap_tokenizer(text_model_dir), CAPTIONS)
    with torch.no_grad():
        audio_embedding = model.get_audio_embedding(loader.clap_audio_input(audio * 2 - 1))
        text_embedding = model.get_text_embedding(tokens)
    return audio_embedding, text_embedding


def test_this_environment_needs_the_model_only_path() -> None:
    """Why the loader exists: torchvision is absent here, so `import laion_clap` fails."""
    assert loader.clap_import_mode() == "model-only"
    assert "torchvision" in (loader.torchvision_problem() or "")
    script = "import laion_clap"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "No module named 'torchvision'" in result.stderr


def test_model_code_loads_without_running_package_inits() -> None:
    model_module = loader.clap_model_module()
    assert model_module.__name__ == "_laion_clap_model_only.model"
    assert hasattr(model_module, "CLAP")
    assert importlib.import_module("_laion_clap_model_only.htsat").create_htsat_model
    assert "laion_clap" not in sys.modules
    assert "laion_clap.clap_module" not in sys.modules
    # the transient torchvision placeholder is gone again
    assert "torchvision.ops.misc" not in sys.modules
    # ... and the one torchvision name laion's utils.py imports fails loudly if ever used
    utils = importlib.import_module("_laion_clap_model_only.utils")
    with pytest.raises(RuntimeError, match="torchvision"):
        utils.freeze_batch_norm_2d(torch.nn.BatchNorm2d(3))
    with pytest.raises(ImportError):
        importlib.import_module("torchvision")
    base = loader.load_clap_model_config("HTSAT-base")
    assert base["embed_dim"] == 1024
    assert base["audio_cfg"]["sample_rate"] == loader.CLAP_SAMPLE_RATE
    assert base["audio_cfg"]["clip_samples"] == loader.CLAP_CLIP_SAMPLES
    assert json.loads((loader.clap_model_configs_dir() / "HTSAT-tiny.json").read_text())


def test_embeddings_shapes_and_norms(clap: torch.nn.Module, text_model_dir: Path) -> None:
    assert not clap.training
    assert clap.text_branch.config.num_hidden_layers == 1  # read from the local dir
    audio_embedding, text_embedding = _embed(clap, text_model_dir)
    for embedding in (audio_embedding, text_embedding):
        assert embedding.shape == (2, 512)
        assert torch.isfinite(embedding).all()
        torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    # the redirect of RobertaModel.from_pretrained is gone after the build
    assert "from_pretrained" not in vars(transformers.RobertaModel)


def test_checkpoint_round_trip(clap: torch.nn.Module, text_model_dir: Path, tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in clap.state_dict().items()}
    # laion checkpoints written with transformers < 4.31 carry this buffer (docs/reference.md
    # pitfall 8)
    state["module.text_branch.embeddings.position_ids"] = torch.arange(80)[None]
    checkpoint = tmp_path / "clap.pt"
    torch.save({"epoch": 1, "state_dict": state}, checkpoint)

    torch.manual_seed(123)  # a differently initialised fresh model
    fresh = loader.build_clap_model(amodel="HTSAT-tiny", text_model_dir=text_model_dir)
    assert loader.load_clap_checkpoint(fresh, checkpoint) is fresh
    for expected, actual in zip(
        _embed(clap, text_model_dir), _embed(fresh, text_model_dir), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_missing_paths_name_the_params_key(clap: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"backends\.clap\.path"):
        loader.load_clap_checkpoint(clap, tmp_path / "absent.pt")
    text_key = r"backends\.clap\.text_model_path"
    with pytest.raises(FileNotFoundError, match=text_key):
        loader.build_clap_model(amodel="HTSAT-tiny", text_model_dir=None)
    with pytest.raises(FileNotFoundError, match=text_key):
        loader.build_clap_model(amodel="HTSAT-tiny", text_model_dir=tmp_path / "no-roberta")
    with pytest.raises(FileNotFoundError, match=text_key):
        loader.load_clap_tokenizer(None)


def test_audio_input_matches_laion_padding_and_refuses_long_clips() -> None:
    (short,) = loader.clap_audio_input([torch.arange(1.0, 200_001.0)])
    assert short["waveform"].shape == (loader.CLAP_CLIP_SAMPLES,)
    assert short["waveform"][200_000] == 1.0  # tiled twice ...
    assert short["waveform"][-1] == 0.0  # ... then zero-padded ('repeatpad')
    assert not short["longer"].item()
    with pytest.raises(ValueError, match="10 s"):
        loader.clap_audio_input([torch.zeros(loader.CLAP_CLIP_SAMPLES + 1)])
