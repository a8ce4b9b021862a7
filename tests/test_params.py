"""The typed config: shipped files validate, bad values fail naming the dotted key."""

from __future__ import annotations

import copy
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from flows.overlays import dvc_set_arguments, stack
from tasks.params import ParamsError, load_params, load_stage_params, merge
from tests.conftest import REPO, params_with

OVERLAYS = sorted((REPO / "params").glob("*.yaml"))
PAPER = REPO / "params/paper_scale.yaml"


def test_shipped_params_load_with_paper_values(shipped_params):
    params = params_with(shipped_params, {})
    # paper 000 §II-A, §II-C, §II-D and Table II
    assert params.curate.candidates_per_track == 15
    assert params.curate.segment_seconds == 10.0
    assert (params.curate.high_threshold, params.curate.medium_threshold) == (0.33, 0.20)
    assert params.curate.keep_per_track == 6
    assert params.train.timestep.score_clip_percentile == 75.0
    assert params.train.timestep.beta_lambda == 1.0
    assert params.model.repa.clap.weight == 0.2
    assert params.model.repa.clap.projector_dim == 256
    assert params.model.repa.clap.time_weight_exponent == 2.0
    assert params.train.optim.learning_rate == 1e-4
    assert params.train.optim.weight_decay == 1e-6
    assert params.train.optim.grad_clip == 1.0
    assert params.train.optim.lr_gamma == 0.1
    assert params.captions.finetune_fraction == 0.4
    # paper 003 §4.1 / §5.2
    assert params.quality.levels == 5
    assert params.sample.cfg_scale == 3.5


@pytest.mark.parametrize(
    ("overlay", "key", "fragment"),
    [
        ({"data": {"nmu_tracks": 3}}, "data.nmu_tracks", "unknown key"),
        ({"model": {"depth": "twelve"}}, "model.depth", "valid integer"),
        (
            {"train": {"timestep": {"beta_lambda": -1.0}}},
            "train.timestep.beta_lambda",
            "greater than or equal to 0",
        ),
        ({"model": {"masking": {"mask_ratio": 1.0}}}, "model.masking.mask_ratio", "less than 1"),
        ({"curate": {"medium_threshold": 0.5}}, "curate", "medium_threshold must be <="),
        ({"model": {"fused_depth": 13}}, "model", "fused_depth must be < depth"),
        (
            {"data": {"noise": {"degraded_fraction": 1.5}}},
            "data.noise.degraded_fraction",
            "less than or equal to 1",
        ),
        ({"quality": {"inference_level": 6}}, "quality", "inference_level must be <= levels"),
        ({"evaluate": {"profile": "quick"}}, "evaluate.profile", "'full' or 'trial'"),
        ({"evaluate": {"trial": {"metrics": ["genre_accuracy"]}}}, "evaluate.trial.metrics.0", ""),
    ],
)
def test_bad_values_name_their_key(shipped_params, overlay, key, fragment):
    raw = copy.deepcopy(shipped_params)
    for section, values in overlay.items():
        _deep_update(raw[section], values)
    with pytest.raises(ParamsError) as caught:
        params_with(raw, {})
    message = str(caught.value)
    assert f"  {key}: " in message
    assert fragment in message


def test_missing_key_is_reported(shipped_params):
    raw = copy.deepcopy(shipped_params)
    del raw["train"]["optim"]["warmup_steps"]
    with pytest.raises(ParamsError, match=r"train\.optim\.warmup_steps: Field required"):
        params_with(raw, {})


def test_config_is_frozen(tiny_params):
    with pytest.raises(Exception, match="frozen"):
        tiny_params.data.num_tracks = 3


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_validate_against_params_yaml(overlay):
    load_params(REPO / "params.yaml", overlays=(overlay,))
    load_params(REPO / "params.yaml", overlays=(PAPER, overlay))


def test_overlay_with_unknown_key_fails(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("model:\n  hiden_dim: 3\n")
    with pytest.raises(ParamsError, match=r"model\.hiden_dim: unknown key"):
        load_params(REPO / "params.yaml", overlays=(overlay,))


def test_table2_overlay_is_the_paper_configuration():
    params = load_params(REPO / "params.yaml", overlays=(PAPER, REPO / "params/table2_450m.yaml"))
    model = params.model  # paper 000 Table II
    assert (model.latent_dim, model.hidden_dim, model.num_heads) == (64, 896, 7)
    assert (model.depth, model.fused_depth, model.latent_seq_len) == (12, 10, 250)
    assert params.train.optim.warmup_steps == 1000
    assert params.finetune.optim.steps == 10_000
    assert params.backends.clap.name == "laion"
    small = load_params(
        REPO / "params.yaml", overlays=(PAPER, REPO / "params/fluxaudio_s_ablation.yaml")
    ).model
    assert (small.hidden_dim, small.num_heads, small.depth, small.fused_depth) == (448, 7, 12, 8)


def test_dvc_set_arguments_round_trip(tmp_path):
    """DVC's own `-S` parser, fed our arguments, turns params.yaml into base + overlays."""
    overlays = (PAPER, REPO / "params/table2_450m.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    arguments = []
    for argument in dvc_set_arguments(overlays, base=REPO / "params.yaml"):
        flag, assignment = shlex.split(argument)
        assert flag == "-S"
        arguments.append(assignment)
    apply_overrides(str(tmp_path / "params.yaml"), arguments)
    expected = merge(yaml.safe_load((REPO / "params.yaml").read_text()), stack(overlays))
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == expected


def test_cli_check_exits_nonzero_naming_the_key(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["masking"]["mask_ratio"] = 1.2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "flows.overlays", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env_with_repo(),
    )
    assert result.returncode != 0
    assert "model.masking.mask_ratio" in result.stderr


def _env_with_repo() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _deep_update(target: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def test_paths_in_overlays_exist():
    assert OVERLAYS, "params/ must ship the paper-scale overlays"
    assert {p.name for p in OVERLAYS} >= {
        "paper_scale.yaml",
        "table2_450m.yaml",
        "fluxaudio_s_ablation.yaml",
    }
    assert all(isinstance(yaml.safe_load(Path(p).read_text()), dict) for p in OVERLAYS)


def test_stage_entry_point_exits_with_the_message(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["num_tracks"] = -3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit, match=r"data\.num_tracks: Input should be greater"):
        load_stage_params(tmp_path / "params.yaml")


def test_params_rewritten_by_dvc_exp_run_load_the_same(tmp_path):
    """`dvc exp run -S` rewrites params.yaml in YAML 1.2 (`mixed_precision: no`, unquoted):
    read as YAML 1.1 that would be False; the loader reads it as DVC wrote it."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(str(tmp_path / "params.yaml"), ["train.seed=3"])
    assert "mixed_precision: no\n" in (tmp_path / "params.yaml").read_text()
    params = load_params(tmp_path / "params.yaml")
    assert params.train.optim.mixed_precision == "no" and params.train.seed == 3


@pytest.mark.parametrize(
    "ablation, fragment",
    [
        ({"configurations": {"typo": {"model.repa.clap.wieght": 0.2}}}, "model.repa.clap.wieght"),
        ({"base": {"train.timestep.beta": 0.0}}, "ablation.base.train.timestep.beta"),
        (
            {"search_space": {"model.quality_token": {"low": 0.0, "high": 1.0, "log": False}}},
            "not a float parameter",
        ),
        ({"objective": "accuracy"}, "is not one of metrics"),
        ({"trial_overrides": {"evaluate.profil": "trial"}}, "ablation.trial_overrides"),
        (
            {"noise_levels": {"w": {"data.noise.wrong_fraction": 0.1}}},
            "ablation.noise_levels.w.data.noise.wrong_fraction",
        ),
        ({"noise_levels": {"w": {"model.depth": 2}}}, "keys only"),
        ({"noise_levels": {"w": {}}}, "keys only"),
        ({"noise_levels": {"w/15": {"data.noise.degraded_fraction": 0.1}}}, "use letters"),
        (
            {
                "search_space": {
                    "train.timestep.beta_lambda": {"low": 2.0, "high": 1.0, "log": False}
                }
            },
            "low must be < high",
        ),
    ],
)
def test_ablation_keys_must_name_params(shipped_params, ablation, fragment):
    raw = copy.deepcopy(shipped_params)
    for key, value in ablation.items():
        raw["ablation"][key] = value
    with pytest.raises(ParamsError, match=fragment.replace(".", r"\.")):
        params_with(raw, {})


def test_shipped_ablation_covers_the_papers_table(shipped_params):
    ablation = params_with(shipped_params, {}).ablation
    # paper 000 Table I: base with every switch off, each switch alone at the paper's settings
    assert ablation.base["train.timestep.beta_lambda"] == 0.0
    assert ablation.base["model.repa.clap.weight"] == ablation.base["model.repa.muq.weight"] == 0
    assert ablation.configurations["clap_repa_aggressive"] == {
        "model.repa.clap.weight": 0.4,
        "model.repa.clap.time_weight_exponent": 4.0,
    }
    lambdas = [c.get("train.timestep.beta_lambda") for c in ablation.configurations.values()]
    assert {0.2, 1.0, 2.0} <= set(lambdas)
    assert ablation.configurations["mdt_mask_0.3"] == {"model.masking.mask_ratio": 0.3}
    assert set(ablation.search_space) == {
        "train.timestep.beta_lambda",
        "model.repa.clap.weight",
        "model.repa.muq.weight",
        "model.masking.mask_ratio",
    }


def test_shipped_data_centric_rows_switch_one_recipe_off_against_base(shipped_params):
    """Base keeps the data recipes on (the papers' tables train on curated data); each
    data-centric row switches one off; the quality row switches prefix and token on together;
    the noise levels set only the corpus's wrong-caption fraction."""
    ablation = params_with(shipped_params, {}).ablation
    recipes = {
        "curate.clap_filter",
        "captions.refine",
        "finetune.two_stage_captions",
        "quality.use_prefix",
    }
    assert {key: ablation.base[key] for key in recipes} == dict.fromkeys(recipes, True)
    rows = {name: ablation.configurations[name] for name in ablation.configurations}
    off = {name: row for name, row in rows.items() if set(row) <= recipes}
    assert sorted(off) == [
        "no_caption_refinement",
        "no_clap_filter",
        "no_quality_prefix",
        "no_two_stage_captions",
    ]
    assert all(list(row.values()) == [False] for row in off.values())
    assert rows["quality_token"] == {"model.quality_token": True}
    assert not ablation.base["model.quality_token"]
    # base's upstream params are the DAG's own: a model-side trial reuses dvc.lock's latents
    shipped = params_with(shipped_params, {})
    assert ablation.base["quality.use_prefix"] == shipped.quality.use_prefix
    fractions = [
        level["data.noise.wrong_caption_fraction"] for level in ablation.noise_levels.values()
    ]
    assert fractions == [0.0, 0.15, 0.30]


def test_trial_evaluation_must_compute_what_the_tables_read(shipped_params):
    """Trials run the trial profile (ablation.trial_overrides): a metric the tables read
    from reports/metrics.json that it does not compute is refused, naming the key."""
    raw = copy.deepcopy(shipped_params)
    raw["evaluate"]["trial"]["metrics"] = ["clap_score", "pmos"]
    with pytest.raises(ParamsError, match=r"evaluate\.trial\.metrics: 'fad_clap' is missing"):
        params_with(raw, {})
    raw["ablation"]["trial_overrides"] = {}  # trials evaluate in full: nothing to cover
    assert params_with(raw, {}).evaluate.profile == "full"
