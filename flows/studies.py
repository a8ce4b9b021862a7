"""Optuna for the ablation sweep and table: storage, studies, claiming and closing trials.

A study carries its whole specification as a user attribute (`StudySpec`: objective,
metrics, search space, pruner, the overrides every trial gets, the MLflow parent run), so a
trial needs only the storage URL and the study name: any worker on any machine that reaches
the storage claims the next trial (`study.ask`) and closes it (`study.tell`). Sweep trials
sample the search space (TPE by default); table cells are enqueued trials whose overrides
ride in their user attributes, popped by the same `ask`.

The training stage reports validation losses to its trial (tasks/train/pruning.py) and stops when
the pruner says so; the trial's runner then finds `pruned_at_step` on the trial and closes
it as pruned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict

from tasks.params import AblationParams, MetricSpec, Params, PrunerParams, SearchRange
from tasks.params.ablation import Direction
from tasks.params.tracked import tracked_keys
from tasks.train.pruning import SPEC_ATTR, make_pruner, open_storage, trial_by_number

SAMPLER_ATTR = "sampler"  # the study's sampler name and seed (each trial rebuilds it)


class StudySpec(BaseModel):
    """What a study is, stored on it so that every trial reads the same definition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sweep", "table"]
    objective: str
    metrics: dict[str, MetricSpec]
    search_space: dict[str, SearchRange]  # sampled by sweep trials; unused by table cells
    pruner: PrunerParams
    fixed_overrides: dict[str, Any]  # budget, seeds: what every trial of the study gets
    mlflow_parent_run_id: str
    trial_timeout_seconds: float | None
    significance_level: float
    # sha256 of the dvc.lock the study started from: a trial in a checkout whose DAG differs
    # (another commit, a host whose clone is behind) is refused, since its results would
    # not compare ("" in studies created before this was recorded: not checked)
    dvc_lock_sha256: str = ""

    @property
    def direction(self) -> Direction:
        return self.metrics[self.objective].direction


def study_spec(
    params: Params,
    kind: Literal["sweep", "table"],
    parent_run_id: str,
    fixed_overrides: Mapping[str, Any],
    trial_timeout_seconds: float | None,
    dvc_lock_sha256: str = "",
) -> StudySpec:
    ablation = params.ablation
    return StudySpec(
        kind=kind,
        objective=ablation.objective,
        metrics=ablation.metrics,
        search_space=ablation.search_space,
        # Table cells must all finish to be compared: nothing prunes them.
        pruner=ablation.pruner
        if kind == "sweep"
        else PrunerParams(name="none", startup_trials=0, warmup_steps=0),
        fixed_overrides=dict(fixed_overrides),
        mlflow_parent_run_id=parent_run_id,
        trial_timeout_seconds=trial_timeout_seconds,
        significance_level=ablation.significance_level,
        dvc_lock_sha256=dvc_lock_sha256,
    )


# --------------------------------------------------------------------------- storage
def default_storage(root: Path) -> str:
    """SQLite beside the MLflow store: one file, safe for the few writers of a local sweep."""
    return f"sqlite:///{(root / 'optuna.db').resolve()}"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: parallel workers don't all sample the point the running trials hold.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def create_study(
    storage: str, name: str, spec: StudySpec, sampler: str, sampler_seed: int
) -> optuna.Study:
    """Create the study once, before any trial runs (parallel schema creation crashes SQLite
    writers); an existing study of the same name is resumed if its spec is the same."""
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=name,
        direction=spec.direction,
        load_if_exists=True,
        sampler=make_sampler(sampler, sampler_seed),
        pruner=make_pruner(spec.pruner),
    )
    _refuse_another_spec(study, name, storage, spec)
    # A resumed study's new trials nest under this flow run's parent run.
    study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    study.set_user_attr(SAMPLER_ATTR, {"name": sampler, "seed": sampler_seed})
    return study


def study_exists(storage: str, name: str) -> bool:
    summaries = optuna.get_all_study_summaries(open_storage(storage), include_best_trial=False)
    return any(summary.study_name == name for summary in summaries)


def check_resumable(storage: str, name: str, spec: StudySpec) -> None:
    """Refuse, without creating anything, a study name the storage holds with another
    specification (budget, search space, objective, ...)."""
    backend = open_storage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=backend)
    except KeyError:  # no such study: it will be created
        return
    _refuse_another_spec(study, name, storage, spec)


def _refuse_another_spec(study: optuna.Study, name: str, storage: str, spec: StudySpec) -> None:
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        return
    before = StudySpec.model_validate(stored)
    if not before.dvc_lock_sha256:  # a study from before the DAG was recorded: not compared
        spec = spec.model_copy(update={"dvc_lock_sha256": ""})
    differs = _differences(before, spec)
    if differs:
        raise ValueError(
            f"study {name!r} exists in {storage} with another specification ({differs}); "
            "give the new sweep or table another name, or rerun it with the same settings"
        )


def _differences(stored: StudySpec, new: StudySpec) -> str:
    old, now = _comparable(stored), _comparable(new)
    return "; ".join(
        f"{key}: {old.get(key)!r} there, {now.get(key)!r} now"
        for key in sorted(set(old) | set(now))
        if old.get(key) != now.get(key)
    )


def _comparable(spec: StudySpec) -> dict[str, Any]:
    """A resumed study may get a new MLflow parent run; everything else must match."""
    return spec.model_dump(mode="json", exclude={"mlflow_parent_run_id"})


def load_study(storage: str, name: str) -> tuple[optuna.Study, StudySpec]:
    """The study as its trials see it: its stored spec, sampler and pruner."""
    backend = open_storage(storage)
    probe = optuna.load_study(study_name=name, storage=backend)
    if SPEC_ATTR not in probe.user_attrs:
        raise ValueError(f"study {name!r} in {storage} was not created by a sweep or table flow")
    spec = StudySpec.model_validate(probe.user_attrs[SPEC_ATTR])
    sampler = probe.user_attrs.get(SAMPLER_ATTR, {"name": "tpe", "seed": 0})
    study = optuna.load_study(
        study_name=name,
        storage=backend,
        sampler=make_sampler(sampler["name"], sampler["seed"]),
        pruner=make_pruner(spec.pruner),
    )
    return study, spec


# --------------------------------------------------------------------------- trials
BASE = "base"  # the Table I row with every switch off


@dataclass(frozen=True)
class ClaimedTrial:
    number: int
    overrides: dict[str, Any]  # dotted params key -> value, fixed overrides included
    label: str  # the DVC experiment name's suffix: t<N> or <configuration>[-<noise>]-s<seed>


class Cell(NamedTuple):
    """One cell of a table: a configuration at a noise level (None: the corpus as params.yaml
    has it) and a training seed, with every override its trial gets."""

    configuration: str
    seed: int
    overrides: dict[str, Any]
    noise: str | None = None


def table_cells(
    ablation: AblationParams,
    configurations: Sequence[str],
    seeds: Sequence[int],
    noise_levels: Sequence[str] = (),
) -> list[Cell]:
    """Paper 000 Table I's cells: configurations × noise levels × seeds, base first; each
    configuration's overrides go on top of base's, then the noise level's, the seed is
    `train.seed`. Ordered by `upstream_first`."""
    unknown = sorted(set(configurations) - set(ablation.configurations))
    if unknown:
        raise ValueError(f"configurations {unknown} are not in params.yaml ablation.configurations")
    missing = sorted(set(noise_levels) - set(ablation.noise_levels))
    if missing:
        raise ValueError(f"noise levels {missing} are not in params.yaml ablation.noise_levels")
    cells = []
    levels: list[str | None] = [*noise_levels] or [None]
    for noise in levels:
        level = {} if noise is None else ablation.noise_levels[noise]
        for name in (BASE, *configurations):
            switch = {} if name == BASE else ablation.configurations[name]
            cells += [
                Cell(name, seed, {**ablation.base, **switch, **level, "train.seed": seed}, noise)
                for seed in seeds
            ]
    return upstream_first(cells, UPSTREAM_STAGES)


# The stages before training: a trial whose overrides leave their params alone reuses their
# outputs as the committed dvc.lock has them; trials that change them alike share them
# through DVC's run-cache (README, "Sweeps and ablation tables").
UPSTREAM_STAGES = ("corpus", "scorers", "curate", "captions", "latents")


def upstream_params(overrides: Mapping[str, Any], stages: Sequence[str]) -> tuple:
    """The overrides that some upstream stage's dvc.yaml params cover (a key equal to, inside
    or above a declared one): what decides whether two cells can share upstream outputs."""
    declared = {key for stage in stages for key in tracked_keys(stage)}

    def covered(key: str) -> bool:
        return any(key == d or key.startswith(f"{d}.") or d.startswith(f"{key}.") for d in declared)

    return tuple(sorted((k, repr(v)) for k, v in overrides.items() if covered(k)))


def upstream_first(cells: Sequence[Cell], stages: Sequence[str]) -> list[Cell]:
    """The first cell of each distinct upstream configuration, then the others, each part in
    the given order. DVC's run-cache restores an upstream stage only from a run that has
    finished: cells claimed together compute it each, so the siblings that can reuse a
    result queue behind the cell that produces it."""
    seen: set[tuple] = set()
    first: list[Cell] = []
    rest: list[Cell] = []
    for cell in cells:
        key = upstream_params(cell.overrides, stages)
        (rest if key in seen else first).append(cell)
        seen.add(key)
    return first + rest


def enqueue_cells(study: optuna.Study, cells: Sequence[tuple]) -> list[tuple[str, int]]:
    """Enqueue the table's cells (`Cell`s, or (configuration, seed, overrides) tuples) that
    have no complete or waiting trial yet; a rerun of a table runs only what is missing or
    failed."""
    present = {
        (attrs.get("configuration"), attrs.get("seed"), attrs.get("noise"))
        for attrs in (
            trial.user_attrs
            for trial in study.get_trials(
                deepcopy=False,
                states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING),
            )
        )
    }
    queued = []
    for cell in (Cell(*cell) for cell in cells):
        if (cell.configuration, cell.seed, cell.noise) in present:
            continue
        attrs = {"configuration": cell.configuration, "seed": cell.seed}
        attrs |= {"overrides": cell.overrides, "noise": cell.noise}
        study.enqueue_trial({}, user_attrs=attrs)
        queued.append((cell.configuration, cell.seed))
    return queued


def claim_trial(
    study: optuna.Study, spec: StudySpec, attributes: Mapping[str, str]
) -> ClaimedTrial:
    """Ask the storage for the next trial: a sampled point of the search space (sweep) or
    the oldest waiting cell (table). `attributes` (the flow run) go on the trial."""
    trial = study.ask()
    record_attributes(study, trial.number, attributes)
    if spec.kind == "sweep":
        # Every trial process builds its own sampler; seeded by the sweep's seed plus the
        # trial's number (unique in the storage), a sequential sweep is reproducible and two
        # workers claiming at the same moment never draw the same point.
        sampler = study.user_attrs[SAMPLER_ATTR]
        study.sampler = make_sampler(sampler["name"], sampler["seed"] + trial.number)
        sampled = {
            key: trial.suggest_float(key, space.low, space.high, log=space.log)
            for key, space in spec.search_space.items()
        }
        return ClaimedTrial(trial.number, {**spec.fixed_overrides, **sampled}, f"t{trial.number}")
    cell = trial.user_attrs.get("overrides")
    if cell is None:
        reason = "no waiting table cell was left to claim"
        close_trial(study, trial.number, TrialState.FAIL, None, {}, reason)
        raise LookupError(f"study {study.study_name!r}: {reason}")
    seed, noise = trial.user_attrs["seed"], trial.user_attrs.get("noise")
    level = "" if noise is None else f"-{noise}"
    label = f"{trial.user_attrs['configuration']}{level}-s{seed}"
    return ClaimedTrial(trial.number, {**spec.fixed_overrides, **cell}, label)


def close_trial(
    study: optuna.Study,
    number: int,
    state: TrialState,
    value: float | None,
    metrics: Mapping[str, float],
    reason: str | None,
) -> TrialState:
    """Record metrics and the failure reason on the trial, then tell the study."""
    trial = trial_by_number(study, number)
    for name, metric in metrics.items():
        trial.set_user_attr(f"metric.{name}", metric)
    if reason:
        trial.set_user_attr("fail_reason", reason)
    if state == TrialState.COMPLETE:
        study.tell(number, value)
    else:
        study.tell(number, state=state)
    return state


def fail_orphaned_trials(study: optuna.Study, ended_runs: Mapping[str, str]) -> list[int]:
    """Trials still RUNNING whose flow run has ended (crashed, cancelled, killed before it
    could tell the study) are closed as failed with the flow run's final state and the
    state's message ("Crashed: no heartbeat for 540 s: ..."), if any."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        flow_run = trial.user_attrs.get("prefect_flow_run_id")
        if flow_run is not None and flow_run in ended_runs:
            state, _, message = ended_runs[flow_run].partition(": ")
            reason = f"flow run {flow_run} ended {state} before closing the trial"
            reason += f": {message}" if message else ""
            close_trial(study, trial.number, TrialState.FAIL, None, {}, reason)
            failed.append(trial.number)
    return failed


# --------------------------------------------------------------------------- outcome
def trial_outcome(
    succeeded: bool,
    failure_reason: str,
    metrics: Mapping[str, float],
    spec: StudySpec,
    pruned_step: int | None,
) -> tuple[TrialState, float | None, str | None]:
    """(state, objective value, reason) of a finished experiment."""
    if succeeded:
        if spec.objective in metrics:
            return TrialState.COMPLETE, metrics[spec.objective], None
        file = spec.metrics[spec.objective].file
        return TrialState.FAIL, None, f"objective {spec.objective} missing from {file}"
    if pruned_step is not None:
        return TrialState.PRUNED, None, None
    return TrialState.FAIL, None, failure_reason


def record_attributes(study: optuna.Study, number: int, attributes: Mapping[str, Any]) -> None:
    trial = trial_by_number(study, number)
    for key, value in attributes.items():
        trial.set_user_attr(key, value)
