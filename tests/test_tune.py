"""Ray Tune + Optuna search on a real local Ray cluster: tables, failures, best config, resume."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pointpeft_ray.distributed.tune import SearchSpec, run_search
from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.results.tables import read_trials
from pointpeft_ray.search.space import SearchSpace

# prompt_length 4 with the published top_k 8 breaks K <= prompt_length - 2: that point
# must fail as a trial (recorded with its error) while the search goes on.
SPACE = {
    "description": "test space",
    "base": {"mode": "peft"},
    "parameters": {
        "peft.prompt_length": {"type": "categorical", "choices": [4, 10]},
        "peft.temperature": {"type": "float", "low": 0.1, "high": 2.0, "log": True},
        "optim.lr": {"type": "float", "low": 5.0e-4, "high": 5.0e-3, "log": True},
    },
    "defaults": {},
}


def _base(tmp_path) -> TrainConfig:
    return TrainConfig.from_dict({
        "mode": "peft", "model": {"preset": "tiny"},
        "data": {"task": "synth/clean", "cache_dir": str(tmp_path / "cache"),
                 "options": {"samples_per_class": 4, "points": 256}},
        "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 15},
    })


def _space(tmp_path) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return SearchSpace.from_yaml(path)


def test_search_records_trials_failures_and_best_config(local_ray, tmp_path):
    base, space = _base(tmp_path), _space(tmp_path)
    spec = SearchSpec(samples=4, name="search", storage_path=str(tmp_path / "runs"), seed=1, max_failures=0,
                      asha=False)
    outcome = run_search(base, space, spec, echo=lambda *_: None)
    folder = Path(outcome.experiment_dir)

    trials = pd.read_parquet(folder / "trials.parquet")  # an independent reader
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == outcome.trials == 4 and len(set(trials.trial_id)) == 4
    failed = trials[trials.status == "failed"]
    done = trials[trials.status == "completed"]
    assert (failed["param.peft.prompt_length"] == 4).all() and (done["param.peft.prompt_length"] == 10).all()
    assert len(done) >= 1 and failed.error.str.contains("ConfigError: .*top_k", regex=True).all()
    assert trials["param.optim.lr"].between(5e-4, 5e-3).all()
    # the default point (the base config's values) is evaluated first
    defaults = space.default_point(base)
    assert any(abs(row["param.optim.lr"] - defaults["optim.lr"]) < 1e-12 for _, row in trials.iterrows())
    # epochs: one row per trial per epoch, each counted once
    assert len(epochs) == 2 * len(done) and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert (done.epochs == 2).all() and done.trainable_params.gt(0).all() and done.node.notna().all()

    best = TrainConfig.from_yaml(folder / "best_config.yaml")
    top = done[done.trial_id == outcome.best_trial].iloc[0]
    assert top.best_accuracy == pytest.approx(done.best_accuracy.max()) == outcome.best_accuracy
    assert best.optim.lr == pytest.approx(top["param.optim.lr"]) and best.peft["prompt_length"] == 10
    assert best.run_dir is None and best.data.task == "synth/clean"
    # one memory bank for the whole search, built by the driver before the trials
    assert len(list((tmp_path / "cache" / "memory_banks").glob("*.arrow"))) == 1

    # resuming a finished search runs nothing again and loses nothing
    again = run_search(base, space, spec, resume=True, echo=lambda *_: None)
    assert again.trials == 4
    assert read_trials(folder / "trials.parquet").num_rows == 4
    assert len(pd.read_parquet(folder / "epochs.parquet")) == len(epochs)


def test_resume_without_a_search_is_a_clear_error(local_ray, tmp_path):
    spec = SearchSpec(samples=1, name="nothing", storage_path=str(tmp_path / "runs"))
    with pytest.raises(Exception, match="no search to resume"):
        run_search(_base(tmp_path), _space(tmp_path), spec, resume=True, echo=lambda *_: None)
