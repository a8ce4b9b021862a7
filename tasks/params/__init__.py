"""The one typed configuration object, mirroring params.yaml section by section.

Every stage calls `load_params()` once and hands each function only its own section.
Unknown keys, wrong types and out-of-range values fail at load time with a message that
names the dotted key (`train.timestep.beta_lambda: ...`), never deep inside a stage.

Overlay files (params/*.yaml) hold only the keys that differ from params.yaml, e.g. the
paper-scale configurations; `python -m flows.overlays overrides FILE...` prints them, stacked
in order, as `-S key=value` arguments for `dvc exp run`, and `check FILE...` validates.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator
from ruamel.yaml import YAML, YAMLError

from tasks.params.ablation import AblationParams, MetricSpec, PrunerParams, SearchRange
from tasks.params.base import Fraction, ParamsError, Positive, PositiveInt, Section
from tasks.params.data import (
    BackendChoice,
    BackendParams,
    CaptionParams,
    CaptionSource,
    ClapChoice,
    CurateParams,
    DataParams,
    DegradationParams,
    IngestParams,
    LatentParams,
    Mel25Params,
    NoiseParams,
    QualityParams,
    ScorerOptim,
    ScorerParams,
    TrackingParams,
)
from tasks.params.evaluation import EvaluateParams
from tasks.params.training import (
    FinetuneParams,
    MaskingParams,
    ModelParams,
    OptimParams,
    RepaBranch,
    RepaParams,
    SampleParams,
    TimestepParams,
    TrainParams,
)

PARAMS_FILE = Path("params.yaml")

__all__ = [
    "PARAMS_FILE",
    "AblationParams",
    "BackendChoice",
    "BackendParams",
    "CaptionParams",
    "CaptionSource",
    "ClapChoice",
    "CurateParams",
    "DataParams",
    "DegradationParams",
    "EvaluateParams",
    "FinetuneParams",
    "Fraction",
    "IngestParams",
    "LatentParams",
    "MaskingParams",
    "Mel25Params",
    "MetricSpec",
    "ModelParams",
    "NoiseParams",
    "OptimParams",
    "Params",
    "ParamsError",
    "Positive",
    "PositiveInt",
    "PrunerParams",
    "QualityParams",
    "RepaBranch",
    "RepaParams",
    "SampleParams",
    "ScorerOptim",
    "ScorerParams",
    "SearchRange",
    "Section",
    "TimestepParams",
    "TrackingParams",
    "TrainParams",
    "flatten",
    "load_params",
    "load_stage_params",
    "merge",
    "read_yaml",
    "resolve_key",
]


# --------------------------------------------------------------------------- root
class Params(Section):
    seed: Annotated[int, Field(ge=0)]
    tracking: TrackingParams
    data: DataParams
    curate: CurateParams
    quality: QualityParams
    captions: CaptionParams
    latents: LatentParams
    backends: BackendParams
    scorers: ScorerParams
    model: ModelParams
    train: TrainParams
    finetune: FinetuneParams
    sample: SampleParams
    evaluate: EvaluateParams
    ablation: AblationParams

    @model_validator(mode="after")
    def _ablation_keys_exist(self) -> Params:
        """Every key the sweep or the table overrides names a value of another section."""
        tree = self.model_dump(exclude={"ablation"})
        ablation = self.ablation
        named = {f"ablation.base.{key}": key for key in ablation.base}
        named |= {f"ablation.trial_overrides.{key}": key for key in ablation.trial_overrides}
        for name, overrides in ablation.configurations.items():
            named |= {f"ablation.configurations.{name}.{key}": key for key in overrides}
        for name, overrides in ablation.noise_levels.items():
            named |= {f"ablation.noise_levels.{name}.{key}": key for key in overrides}
        for where, key in named.items():
            resolve_key(tree, key, where)
        for key in ablation.search_space:
            if not isinstance(resolve_key(tree, key, f"ablation.search_space.{key}"), float):
                raise ValueError(f"ablation.search_space.{key}: {key} is not a float parameter")
        self._trial_metrics_cover_the_ablation()
        return self

    def _trial_metrics_cover_the_ablation(self) -> None:
        """A trial evaluation must write every generated.* metric the tables read."""
        if self.ablation.trial_overrides.get("evaluate.profile") != "trial":
            return
        computed = set(self.evaluate.trial.metrics)
        for name, spec in self.ablation.metrics.items():
            parts = spec.key.split(".")
            from_trial = spec.file == "reports/metrics.json" and parts[0] == "generated"
            if from_trial and parts[1] not in computed:
                raise ValueError(
                    f"evaluate.trial.metrics: {parts[1]!r} is missing, and ablation.metrics."
                    f"{name} reads it from trials (ablation.trial_overrides sets "
                    "evaluate.profile: trial)"
                )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str = "params.yaml") -> Params:
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ParamsError(_describe(error, source)) from None


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid value(s)"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        shown = (
            "" if item["type"] in ("missing", "extra_forbidden") else f" (got {item['input']!r})"
        )
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """YAML 1.2, as DVC reads and writes params.yaml: `dvc exp run -S` rewrites the file
    with ruamel, where `no` is a string; a YAML 1.1 reader (PyYAML) would take it for False."""
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return raw


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge `overlay` into `base`; an overlay key absent from base is an error."""
    merged = dict(base)
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ParamsError(f"overlay: {dotted}: unknown key")
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            merged[key] = merge(base[key], value, prefix=f"{dotted}.")
        else:
            merged[key] = value
    return merged


def load_params(path: Path = PARAMS_FILE, overlays: tuple[Path, ...] = ()) -> Params:
    raw = read_yaml(path)
    for overlay in overlays:
        raw = merge(raw, read_yaml(overlay))
    source = " + ".join(str(p) for p in (path, *overlays))
    return Params.from_mapping(raw, source=source)


def load_stage_params(path: Path = PARAMS_FILE) -> Params:
    """For a stage's main(): a bad params.yaml ends the process with the message alone."""
    try:
        return load_params(path)
    except ParamsError as error:
        raise SystemExit(f"error: {error}") from None


def resolve_key(tree: Mapping[str, Any], key: str, where: str = "") -> Any:
    """The value at dotted `key`; a missing key raises ParamsError (a ValueError, so a
    validator reports it too) naming `where`."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"{where or key}: {key} is not a key of params.yaml")
        node = node[part]
    return node


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten(value, prefix=f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
