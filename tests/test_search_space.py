"""Search spaces: the YAML format, its validation errors, Optuna define-by-run sampling
(bounds, log scale, conditions, dynamic bounds) and building trial configs. No Ray, no
training."""
from pathlib import Path

import optuna
import pytest
import yaml

from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.errors import ConfigError
from pointpeft_ray.search import SearchSpace
from pointpeft_ray.search.expressions import BoundExpression, parse_bound

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Exercises every spec form: log float, int grid, categorical, a condition, a dynamic bound.
DEMO = {
    "base": {"mode": "peft", "model": {"preset": "tiny"}, "optim": {"epochs": 20}},
    "parameters": {
        "peft.prompt_length": {"type": "int", "low": 3, "high": 12},
        "peft.memory_bank": {"type": "categorical", "choices": [True, False]},
        "peft.top_k": {"type": "int", "low": 1, "high": "peft.prompt_length - 2", "when": {"peft.memory_bank": True}},
        "peft.temperature": {"type": "float", "low": 0.1, "high": 10.0, "log": True,
                             "when": {"peft.memory_bank": True}},
        "peft.neighbours": {"type": "int", "low": 2, "high": 8, "step": 2},
        "peft.pooling": {"type": "categorical", "choices": ["max", "max_mean"]},
        "optim.lr": {"type": "float", "low": "1e-5", "high": "1e-1", "log": True},
        "model.backbone.drop_path_rate": {"type": "float", "low": 0.0, "high": 0.3},
        "optim.batch_size": 16,
    },
    "defaults": {},
}


def run_study(space, trials=30, sampler=None):
    """A seeded TPE study over a cheap objective; returns the suggested points."""
    points = []

    def objective(trial):
        point = space.suggest(trial)
        points.append(point)
        space.apply(None, point)  # every sampled point must be a valid TrainConfig
        return point.get("optim.lr", 0.0)

    study = optuna.create_study(sampler=sampler or optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=trials)
    return study, points


def write_space(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- shipped spaces ---

@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_space_validates_and_its_default_point_applies(path):
    space = SearchSpace.from_yaml(path)
    point = space.default_point()
    assert point, "every shipped space has a default point to evaluate first"
    config = space.apply(None, point)
    assert isinstance(config, TrainConfig)
    assert set(space.column_types()) == set(space.parameter_names())


def test_the_three_spaces_are_shipped():
    assert {p.name for p in SPACES} >= {"pointpeft_default.yaml", "cpu_demo.yaml", "full_vs_peft.yaml"}


def test_default_space_covers_every_knob_and_starts_at_the_published_setting():
    space = SearchSpace.from_yaml(SPACES[0].parent / "pointpeft_default.yaml")
    knobs = {"peft.prompt_length", "peft.prompt_depth", "peft.top_k", "peft.temperature", "peft.bank_size",
             "peft.neighbours", "peft.num_subcentres", "peft.adapter_dim", "peft.mlp_adapter_scale",
             "peft.centre_scale", "peft.propagate_scale", "peft.pooling", "optim.lr", "optim.weight_decay",
             "model.backbone.drop_path_rate"}
    assert knobs <= set(space.parameter_names())
    published = space.apply(None, space.default_point())
    assert published.peft == TrainConfig().peft.replace(num_subcentres=64)
    assert published.optim == TrainConfig().optim
    assert published.model.backbone == TrainConfig().model.backbone


# --- sampling ---

def test_tpe_samples_respect_bounds_grid_conditions_and_the_dynamic_bound():
    space = SearchSpace.from_dict(DEMO)
    study, points = run_study(space)
    for point in points:
        assert 3 <= point["peft.prompt_length"] <= 12
        assert point["peft.neighbours"] in (2, 4, 6, 8)
        assert point["peft.pooling"] in ("max", "max_mean")
        assert 1e-5 <= point["optim.lr"] <= 1e-1
        assert 0.0 <= point["model.backbone.drop_path_rate"] <= 0.3
        assert point["optim.batch_size"] == 16  # fixed values come with every point
        if point["peft.memory_bank"]:
            assert 1 <= point["peft.top_k"] <= point["peft.prompt_length"] - 2
            assert 0.1 <= point["peft.temperature"] <= 10.0
        else:
            assert "peft.top_k" not in point and "peft.temperature" not in point
    banks = {point["peft.memory_bank"] for point in points}
    assert banks == {True, False}, "both branches of the condition were explored"
    assert study.trials[0].distributions["optim.lr"].log
    assert not study.trials[0].distributions["model.backbone.drop_path_rate"].log


def test_log_scale_spreads_samples_over_orders_of_magnitude():
    space = SearchSpace.from_dict(DEMO)
    _, points = run_study(space, trials=200, sampler=optuna.samplers.RandomSampler(seed=1))
    below_geometric_middle = sum(p["optim.lr"] < 1e-3 for p in points) / len(points)
    assert 0.35 < below_geometric_middle < 0.65  # a linear range would put ~1% there


def test_chained_conditions_in_full_vs_peft():
    space = SearchSpace.from_yaml(SPACES[0].parent / "full_vs_peft.yaml")
    _, points = run_study(space)
    modes = {point["mode"] for point in points}
    assert modes == {"peft", "full", "linear"}
    for point in points:
        peft_keys = {key for key in point if key.startswith("peft.")}
        if point["mode"] != "peft":
            assert not peft_keys
        else:
            assert {"peft.prompt_length", "peft.memory_bank", "peft.neighbours"} <= peft_keys
            assert ("peft.top_k" in point) == point["peft.memory_bank"]


def test_default_point_can_be_enqueued_and_is_evaluated_first():
    space = SearchSpace.from_dict(DEMO)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    default = space.default_point()
    study.enqueue_trial(default)
    study.optimize(lambda trial: len(space.suggest(trial)), n_trials=2)
    assert study.trials[0].params == default
    assert default["peft.prompt_length"] == 10 and default["optim.lr"] == 5e-4  # the config's values


def test_dynamic_bound_that_resolves_empty_is_a_clear_error():
    data = {"parameters": {"peft.prompt_length": {"type": "categorical", "choices": [3, 10]},
                           "peft.top_k": {"type": "int", "low": 4, "high": "peft.prompt_length - 2"}}}
    space = SearchSpace.from_dict(data, source="s.yaml")
    trial = optuna.trial.FixedTrial({"peft.prompt_length": 3, "peft.top_k": 1})
    with pytest.raises(ConfigError, match=r"s.yaml: parameter 'peft.top_k': bounds resolve to low 4 > high 1 "
                                          r"\(with peft.prompt_length=3\)"):
        space.suggest(trial)


# --- building configs ---

def test_apply_layers_base_config_space_base_and_point():
    base_config = TrainConfig.from_dict({"data": {"task": "synth/clean", "options": {"points": 512}},
                                         "peft": {"bank_seed": 3}, "optim": {"epochs": 40}})
    space = SearchSpace.from_dict(DEMO)
    config = space.apply(base_config, {"peft.prompt_length": 6, "peft.memory_bank": True, "peft.top_k": 4,
                                       "optim.lr": 1e-3, "model.backbone.drop_path_rate": 0.2})
    assert config.data.task == "synth/clean" and config.data.options == {"points": 512}
    assert config.model.preset == "tiny" and config.optim.epochs == 20   # the space's base wins
    assert config.optim.batch_size == 16                                 # fixed value added
    peft = config.peft
    assert (peft.prompt_length, peft.top_k, peft.bank_seed) == (6, 4, 3)
    assert config.optim.lr == 1e-3 and config.model.backbone.drop_path_rate == 0.2


def test_apply_reports_a_combination_the_peft_config_rejects():
    space = SearchSpace.from_dict({"parameters": {"peft.prompt_length": {"type": "categorical", "choices": [4, 10]},
                                                  "peft.top_k": 8}}, source="combo.yaml")
    with pytest.raises(ConfigError, match=r"combo.yaml: the point \{peft.prompt_length=4.*top_k \(8\) must be <="):
        space.apply(None, {"peft.prompt_length": 4})


def test_apply_checks_the_backbone_shape():
    space = SearchSpace.from_dict({"base": {"model": {"preset": "tiny"}},
                                   "parameters": {"peft.prompt_depth": {"type": "int", "low": 1, "high": 4}}})
    with pytest.raises(ConfigError, match=r"prompt_depth \(4\) > backbone depth \(2\)"):
        space.apply(None, {"peft.prompt_depth": 4})


def test_apply_rejects_names_outside_the_space():
    space = SearchSpace.from_dict(DEMO)
    with pytest.raises(ConfigError, match="peft.adapter_dim not parameters of this space"):
        space.apply(None, {"peft.adapter_dim": 8})


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("parameters:\n  optim.lr: {type: categorical, choices: [1e-4, 5e-4]}\n"
                    "  optim.weight_decay: {type: float, low: 1e-3, high: 1e-1, log: true}\n")
    space = SearchSpace.from_yaml(path)
    assert space.to_dict()["parameters"]["optim.lr"]["choices"] == [1e-4, 5e-4]
    assert space.to_dict()["parameters"]["optim.weight_decay"]["low"] == 1e-3


def test_without_defaults_there_is_no_default_point():
    space = SearchSpace.from_dict({"parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}})
    assert space.default_point() is None


# --- validation errors name the file and the parameter ---

BAD_SPECS = [
    ({"peft.promt_length": {"type": "int", "low": 2, "high": 8}},
     "parameter 'peft.promt_length'.*did you mean 'peft.prompt_length'"),
    ({"optim.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}},
     "parameter 'optim.learning_rate'.*unknown field 'learning_rate' in optim"),
    ({"peft": {"type": "fixed", "value": 1}}, "parameter 'peft': 'peft' is a section"),
    ({"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-4}}, r"parameter 'optim.lr': low \(0.001\) must be < high"),
    ({"optim.weight_decay": {"type": "float", "low": 0.0, "high": 1e-1, "log": True}},
     "parameter 'optim.weight_decay': log: true needs low > 0"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 1e-3}}, "parameter 'optim.lr': low: 0.0 is not valid .*greater than 0"),
    ({"peft.pooling": {"type": "categorical", "choices": []}}, "parameter 'peft.pooling': choices is empty"),
    ({"peft.pooling": {"type": "categorical", "choices": ["max", "mean"]}}, "parameter 'peft.pooling'.*'mean' is not valid"),
    ({"optim.lr": {"type": "floaty", "low": 1e-4, "high": 1e-3}}, "parameter 'optim.lr': type must be one of float"),
    ({"optim.lr": {"type": "float", "low": 1e-4, "hgh": 1e-3}}, "parameter 'optim.lr'.*did you mean 'high'"),
    ({"peft.prompt_length": {"type": "float", "low": 2, "high": 8}}, "parameter 'peft.prompt_length'.*use type: int"),
    ({"peft.pooling": {"type": "int", "low": 2, "high": 8}}, "parameter 'peft.pooling'.*not numeric"),
    ({"model.backbone.drop_path_rate": {"type": "float", "low": 0.0, "high": 1.0}},
     "parameter 'model.backbone.drop_path_rate'.*less than 1"),
    ({"peft.top_k": {"type": "int", "low": 1, "high": 4, "when": {"peft.memory_bank": True}}},
     "parameter 'peft.top_k': refers to 'peft.memory_bank', which is not a parameter listed above"),
    ({"peft.top_k": {"type": "int", "low": 1, "high": 4, "when": {"peft.memory_bank": True}},
      "peft.memory_bank": {"type": "categorical", "choices": [True, False]}},
     "parameter 'peft.top_k': refers to 'peft.memory_bank', which is listed after it"),
    ({"peft.top_k": {"type": "int", "low": 1, "high": "peft.prompt_length - 2"}},
     "parameter 'peft.top_k': refers to 'peft.prompt_length', which is not a parameter"),
    ({"peft.pooling": {"type": "categorical", "choices": ["max", "max_mean"]},
      "peft.top_k": {"type": "int", "low": 1, "high": "peft.pooling"}}, "parameter 'peft.top_k'.*not numeric"),
    ({"mode": {"type": "categorical", "choices": ["peft", "full"]},
      "peft.top_k": {"type": "int", "low": 1, "high": 4, "when": {"mode": "PEFT"}}},
     "parameter 'peft.top_k': when: mode can never be 'PEFT'"),
    ({"peft.top_k": {"type": "int", "low": 1, "high": "__import__('os').getcwd()"}},
     "parameter 'peft.top_k': high: bound .* only numbers, parameter names"),
    ({"mode": {"type": "categorical", "choices": ["peft", "full"]},
      "peft.prompt_length": {"type": "int", "low": 4, "high": 12, "when": {"mode": "peft"}},
      "peft.top_k": {"type": "int", "low": 1, "high": "peft.prompt_length - 2"}},
     "parameter 'peft.top_k'.*'peft.prompt_length', which can be inactive"),
    ({"optim.lr": {"type": "categorical", "choices": [1e-4, "fast"]}}, "parameter 'optim.lr'.*'fast' is not valid"),
    ({"peft.bank_size": {"type": "categorical", "choices": [None, 256, 256]}}, "parameter 'peft.bank_size'.*listed twice"),
    ({"optim.epochs": {"type": "int", "low": 1, "high": 10**20}},
     "parameter 'optim.epochs'.*less than or equal to 9223372036854775807"),
    ({"peft.bank_size": {"type": "categorical", "choices": [256, 10**20]}},
     "parameter 'peft.bank_size'.*does not fit a 64-bit integer"),
]


@pytest.mark.parametrize("parameters, message", BAD_SPECS)
def test_bad_space_errors_name_the_file_and_the_parameter(tmp_path, parameters, message):
    path = write_space(tmp_path, {"parameters": parameters}, name="bad_space.yaml")
    with pytest.raises(ConfigError, match=f"bad_space.yaml: .*{message}"):
        SearchSpace.from_yaml(path)


@pytest.mark.parametrize("data, message", [
    ({"parameters": {}}, "parameters: is empty"),
    ({"parameter": {}}, "did you mean 'parameters'"),
    ({"base": {"optim": {"lr": -1}}, "parameters": {"optim.epochs": 5}}, "base: .*lr"),
    ({"parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, "defaults": {"optim.lr": 1.0}},
     r"parameter 'optim.lr': default point \(listed under defaults:\): 1.0 is outside"),
    ({"parameters": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, "defaults": {}},
     r"parameter 'optim.lr': default point \(taken from the base config.*\): 0.0005 is outside"),
    ({"parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, "defaults": {"optim.wd": 0.1}},
     "defaults: 'optim.wd' is not a parameter"),
])
def test_bad_file_level_errors(tmp_path, data, message):
    path = write_space(tmp_path, data, name="bad_file.yaml")
    with pytest.raises(ConfigError, match=f"bad_file.yaml.*{message}"):
        SearchSpace.from_yaml(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found: .*none.yaml"):
        SearchSpace.from_yaml(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("parameters: {optim.lr: [")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        SearchSpace.from_yaml(broken)


# --- bound expressions ---

def test_bound_expressions_are_parsed_without_eval():
    assert parse_bound(4) == 4 and parse_bound("1e-4") == 1e-4 and parse_bound("2 * 3 - 1") == 5
    bound = parse_bound("min(32, peft.num_subcentres // 2) - 1")
    assert isinstance(bound, BoundExpression) and bound.names == ("peft.num_subcentres",)
    assert bound.evaluate({"peft.num_subcentres": 40}) == 19
    for unsafe in ("__import__('os')", "peft.x if 1 else 2", "[1][0]", "'a'", "abs(-1)", "peft.x ** 2"):
        with pytest.raises(ValueError):
            parse_bound(unsafe)
