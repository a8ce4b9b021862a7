"""LAION-CLAP model code with or without torchvision, and never from the Hugging Face hub.

Why this module exists: `import laion_clap` runs `laion_clap/__init__.py` -> `hook.py` ->
`training/data.py`, which imports torchvision (image datasets and transforms it never uses for
audio) and, at import time, fetches the bert-base-uncased, roberta-base and facebook/bart-base
tokenizers from the hub. `clap_module/__init__.py` also imports torchvision (`transform.py`).
The CLAP model code itself (`clap_module/model.py`, `htsat.py`, `pann_model.py`, ...) touches
torchvision only through `utils.py`, which imports `torchvision.ops.misc.FrozenBatchNorm2d` to
freeze *image* towers, something a CLAP audio/text model never does.

`clap_import_mode()` picks one of two ways to get the model code:

* "package": torchvision imports. We `import laion_clap` as its docs intend and use the very
  `clap_module.model` that `laion_clap.CLAP_Module` uses. That import fetches the three
  tokenizers above unless the HF cache holds them (offline: set HF_HUB_OFFLINE=1).
* "model-only": torchvision is missing or broken (ImportError, or `RuntimeError: operator
  torchvision::nms does not exist` from a build that does not match torch). We register a
  private package whose `__path__` is the installed `clap_module` directory and import
  `<private>.model` from it, so no package `__init__` runs; laion's files are used unchanged.
  While `utils.py` alone is imported, `torchvision.ops.misc` resolves to a placeholder whose
  `FrozenBatchNorm2d` raises if ever instantiated; it is removed from `sys.modules` straight
  after, so the rest of the process still sees torchvision as absent.

Either way `build_clap_model` constructs `CLAP` exactly as laion's `factory.create_model`
does, with the RoBERTa text branch read from a local directory (params
`backends.clap.text_model_path`),
never from the hub; `load_clap_checkpoint` then loads a laion `.pt` with `weights_only=True`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

ClapImportMode = Literal["package", "model-only"]

PARAMS_KEY = "backends.clap.path"
TEXT_PARAMS_KEY = "backends.clap.text_model_path"
CLAP_SAMPLE_RATE = 48_000
CLAP_CLIP_SAMPLES = 480_000  # 10 s at 48 kHz: the HTSAT configs' clip_samples
CLAP_TEXT_MAX_LENGTH = 77  # hook.py: padding="max_length", truncation=True, max_length=77
ROBERTA_HUB_NAME = "roberta-base"  # the name clap_module/model.py passes to from_pretrained

_PRIVATE_PACKAGE = "_laion_clap_model_only"
_TORCHVISION_NAMES = ("torchvision", "torchvision.ops", "torchvision.ops.misc")
_LOCK = threading.RLock()

_TEXT_DIR_HELP = (
    f"Set params `{TEXT_PARAMS_KEY}` so that the CLAP backend finds a local RoBERTa directory "
    "written by `save_pretrained` (a copy of the hub's roberta-base: config.json, the model "
    "weights, and the tokenizer files vocab.json + merges.txt or tokenizer.json). LAION-CLAP "
    "builds its text branch from roberta-base and this project never downloads it."
)
_CHECKPOINT_HELP = (
    f"Set params `{PARAMS_KEY}` so that the CLAP backend finds a LAION-CLAP checkpoint (.pt), "
    "e.g. music_speech_audioset_epoch_15_esc_89.98.pt (HTSAT-base, no fusion)."
)


# --------------------------------------------------------------------------- import mode
@cache
def torchvision_problem() -> str | None:
    """Why torchvision cannot be used here (None when it imports fine). Probed once."""
    try:
        importlib.import_module("torchvision.ops.misc")
        importlib.import_module("torchvision.transforms")
    except Exception as error:  # ImportError, or RuntimeError from a mismatched build
        return f"{type(error).__name__}: {error}"
    return None


def clap_import_mode() -> ClapImportMode:
    """'package' where torchvision imports (use `import laion_clap`), else 'model-only'."""
    return "package" if torchvision_problem() is None else "model-only"


def _laion_clap_dir() -> Path:
    """The installed `laion_clap` directory, located without executing its `__init__`."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("laion_clap is not installed (pip install laion-clap)")
    return Path(next(iter(spec.submodule_search_locations)))


def clap_model_configs_dir() -> Path:
    """laion's `clap_module/model_configs` directory (HTSAT-base.json, HTSAT-tiny.json, ...)."""
    return _laion_clap_dir() / "clap_module" / "model_configs"


def load_clap_model_config(amodel: str) -> dict[str, Any]:
    """The JSON architecture config `create_model` would use for `amodel` (a fresh copy)."""
    name = amodel.replace("/", "-")  # as create_model does
    path = clap_model_configs_dir() / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in clap_model_configs_dir().glob("*.json"))
        raise ValueError(f"unknown LAION-CLAP audio model {amodel!r}; known: {known}")
    return json.loads(path.read_text())


class _FrozenBatchNorm2dNeedsTorchvision(nn.Module):
    """Stands in for torchvision's FrozenBatchNorm2d in model-only mode; never usable."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "laion_clap's freeze_batch_norm_2d (used only to lock image towers) needs "
            f"torchvision, which cannot be imported here ({torchvision_problem()})"
        )


@contextmanager
def _torchvision_placeholder() -> Iterator[None]:
    """Let laion's `utils.py` run `from torchvision.ops.misc import FrozenBatchNorm2d`.

    The three placeholder modules live in `sys.modules` only for the duration of the block;
    whatever was there before (normally nothing) is put back afterwards.
    """
    modules = {
        name: types.ModuleType(name, "placeholder: torchvision absent")
        for name in _TORCHVISION_NAMES
    }
    modules["torchvision"].ops = modules["torchvision.ops"]  # type: ignore[attr-defined]
    modules["torchvision.ops"].misc = modules["torchvision.ops.misc"]  # type: ignore[attr-defined]
    modules["torchvision.ops.misc"].FrozenBatchNorm2d = (  # type: ignore[attr-defined]
        _FrozenBatchNorm2dNeedsTorchvision
    )
    saved = {name: sys.modules.get(name) for name in _TORCHVISION_NAMES}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _model_only_module() -> types.ModuleType:
    """`clap_module.model` imported under a private package name, no `__init__` executed."""
    with _LOCK:
        if f"{_PRIVATE_PACKAGE}.model" in sys.modules:
            return sys.modules[f"{_PRIVATE_PACKAGE}.model"]
        # Resolve transformers' lazy names before the placeholder window, so that its
        # torchvision availability check can never observe the placeholder.
        import transformers

        _ = (transformers.BertModel, transformers.RobertaModel, transformers.BartModel)

        directory = str(_laion_clap_dir() / "clap_module")
        spec = importlib.machinery.ModuleSpec(_PRIVATE_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [directory]
        package = importlib.util.module_from_spec(spec)
        package.__doc__ = f"laion_clap.clap_module's files, without its __init__ ({__name__})"
        sys.modules[_PRIVATE_PACKAGE] = package
        try:
            if torchvision_problem() is None:
                importlib.import_module(f"{_PRIVATE_PACKAGE}.utils")
            else:
                with _torchvision_placeholder():
                    importlib.import_module(f"{_PRIVATE_PACKAGE}.utils")
            return importlib.import_module(f"{_PRIVATE_PACKAGE}.model")
        except BaseException:
            for name in [n for n in sys.modules if n.partition(".")[0] == _PRIVATE_PACKAGE]:
                del sys.modules[name]
            raise


def _package_module() -> types.ModuleType:
    """The `clap_module.model` that `laion_clap.CLAP_Module` uses (plain `import laion_clap`)."""
    try:
        importlib.import_module("laion_clap")
    except OSError as error:  # hub unreachable: training/data.py fetches tokenizers on import
        raise RuntimeError(
            "`import laion_clap` fetches the bert-base-uncased, roberta-base and "
            "facebook/bart-base tokenizers at import time; put them in the Hugging Face cache "
            "and set HF_HUB_OFFLINE=1, or use import_mode='model-only'"
        ) from error
    # laion_clap/__init__.py appends its own directory to sys.path and hook.py imports
    # `clap_module` as a top-level package, so this is the module CLAP_Module builds from.
    return importlib.import_module("clap_module.model")


def clap_model_module(import_mode: ClapImportMode | None = None) -> types.ModuleType:
    """laion's `clap_module/model.py` (defines `CLAP`), imported per `clap_import_mode()`."""
    mode = import_mode or clap_import_mode()
    if mode == "package":
        return _package_module()
    if mode == "model-only":
        return _model_only_module()
    raise ValueError(f"import_mode must be 'package' or 'model-only', not {mode!r}")


# --------------------------------------------------------------------------- text branch
def _require_text_model_dir(text_model_dir: str | Path | None) -> Path:
    if text_model_dir is None:
        raise FileNotFoundError(f"no local RoBERTa directory given. {_TEXT_DIR_HELP}")
    directory = Path(text_model_dir)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory} is not a save_pretrained RoBERTa directory (no config.json). "
            f"{_TEXT_DIR_HELP}"
        )
    return directory


@contextmanager
def roberta_from_local_dir(text_model_dir: str | Path) -> Iterator[None]:
    """Within the block, `RobertaModel.from_pretrained('roberta-base')` reads `text_model_dir`.

    CLAP's constructor hard-codes `RobertaModel.from_pretrained('roberta-base')`, a hub
    download. Rather than editing laion's code, we shadow the inherited classmethod on
    `transformers.RobertaModel` (the class model.py imported) with one that swaps that one
    name for the local directory and forces `local_files_only=True`; other names pass through
    unchanged. On exit the shadow is deleted, so the inherited method is back. A lock makes
    concurrent builds wait rather than interleave.
    """
    import transformers

    directory = _require_text_model_dir(text_model_dir)
    roberta = transformers.RobertaModel
    with _LOCK:
        original = roberta.from_pretrained  # bound to RobertaModel
        had_own = "from_pretrained" in vars(roberta)
        own: Any = vars(roberta).get("from_pretrained")  # a raw classmethod object, or None

        def from_local(
            cls: type, name: str | os.PathLike[str] | None, *args: Any, **kwargs: Any
        ) -> Any:
            if name == ROBERTA_HUB_NAME:
                kwargs["local_files_only"] = True
                return original(str(directory), *args, **kwargs)
            return original(name, *args, **kwargs)

        roberta.from_pretrained = classmethod(from_local)  # type: ignore[assignment,method-assign]
        try:
            yield
        finally:
            if had_own:
                roberta.from_pretrained = own  # type: ignore[method-assign]
            else:
                del roberta.from_pretrained


def load_clap_tokenizer(text_model_dir: str | Path | None) -> Any:
    """The RoBERTa tokenizer from `text_model_dir` (local files only), as hook.py uses it."""
    import transformers

    directory = _require_text_model_dir(text_model_dir)
    return transformers.RobertaTokenizerFast.from_pretrained(directory, local_files_only=True)


def tokenize_captions(tokenizer: Any, captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """hook.py's `CLAP_Module.tokenizer`: pad/truncate to 77 tokens; input_ids + attention_mask."""
    encoded = tokenizer(
        list(captions),
        padding="max_length",
        truncation=True,
        max_length=CLAP_TEXT_MAX_LENGTH,
        return_tensors="pt",
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


# --------------------------------------------------------------------------- model
def build_clap_model(
    amodel: str = "HTSAT-base",
    tmodel: str = "roberta",
    text_model_dir: str | Path | None = None,
    enable_fusion: bool = False,
    *,
    import_mode: ClapImportMode | None = None,
) -> nn.Module:
    """An untrained LAION-CLAP `CLAP` on CPU in eval mode, built as `create_model` builds it.

    Mirrors `laion_clap.CLAP_Module(enable_fusion, amodel=amodel, tmodel=tmodel)`: the JSON
    config of `amodel`, `text_cfg.model_type = tmodel`, `enable_fusion`, `fusion_type`
    ('aff_2d' with fusion, else 'None'), and CLAP's defaults for the rest (quick_gelu=False,
    joint_embed_shape=512, mlp_act='relu'); precision fp32. The text branch's
    `from_pretrained('roberta-base')` reads `text_model_dir` (see `roberta_from_local_dir`).
    Load trained weights afterwards with `load_clap_checkpoint`.
    For music_speech_audioset_epoch_15_esc_89.98.pt use amodel='HTSAT-base', no fusion.
    """
    if tmodel != "roberta":
        raise ValueError(f"only tmodel='roberta' (all released LAION-CLAP weights), not {tmodel!r}")
    directory = _require_text_model_dir(text_model_dir)
    model_cfg = copy.deepcopy(load_clap_model_config(amodel))
    model_cfg["text_cfg"]["model_type"] = tmodel
    model_cfg["enable_fusion"] = enable_fusion
    model_cfg["fusion_type"] = "aff_2d" if enable_fusion else "None"
    module = clap_model_module(import_mode)
    with roberta_from_local_dir(directory):
        model = module.CLAP(**model_cfg)
    return model.to(device="cpu").eval()


def load_clap_checkpoint(model: nn.Module, checkpoint_path: str | Path | None) -> nn.Module:
    """Load a LAION-CLAP checkpoint into `model` strictly; returns `model`.

    As laion's `factory.load_state_dict(skip_params=True)`: take `checkpoint["state_dict"]`
    when present, strip the DataParallel `module.` prefix, and drop
    `text_branch.embeddings.position_ids` (no longer a saved buffer in transformers >= 4.31).
    Unlike laion, `torch.load(..., weights_only=True)`: a checkpoint carrying arbitrary
    pickled objects is refused instead of executed.
    """
    if checkpoint_path is None or not Path(checkpoint_path).is_file():
        raise FileNotFoundError(
            f"LAION-CLAP checkpoint not found: {checkpoint_path}. {_CHECKPOINT_HELP}"
        )
    checkpoint = torch.load(Path(checkpoint_path), map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{checkpoint_path} holds no state_dict")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    state_dict.pop("text_branch.embeddings.position_ids", None)
    model.load_state_dict(state_dict, strict=True)
    return model


def clap_audio_input(waveforms: torch.Tensor | Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """The per-clip input dicts `CLAP.get_audio_embedding` takes (non-fusion models).

    Replicates what hook.py builds with `training/data.py::get_audio_features` for clips of
    at most 10 s at 48 kHz: {"longer": tensor([False]), "waveform": (480000,) float}, shorter
    clips 'repeatpad'-ed (tiled, then zero-padded). Longer clips are refused rather than
    cropped at random as laion does (docs/reference.md pitfall 10): window them yourself.
    No int16 round trip (as hook.py with `use_tensor=True`); quantise first to match its
    numpy path bit for bit.
    """
    inputs = []
    for waveform in waveforms:
        audio = torch.as_tensor(waveform, dtype=torch.float32)
        if audio.ndim != 1 or audio.numel() == 0:
            raise ValueError(f"expected non-empty mono clips (T,), got shape {tuple(audio.shape)}")
        if audio.numel() > CLAP_CLIP_SAMPLES:
            raise ValueError(
                f"clip of {audio.numel()} samples exceeds {CLAP_CLIP_SAMPLES} (10 s at 48 kHz); "
                "laion would crop it at random, so split it into fixed windows instead"
            )
        if audio.numel() < CLAP_CLIP_SAMPLES:
            audio = audio.repeat(CLAP_CLIP_SAMPLES // audio.numel())
            audio = nn.functional.pad(audio, (0, CLAP_CLIP_SAMPLES - audio.numel()))
        inputs.append({"longer": torch.tensor([False]), "waveform": audio})
    return inputs
