"""Ray Tune + Optuna search on a real local Ray cluster: tables, failures, best config, resume."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pointpeft_ray.distributed.tune import SearchSettings, run_search
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
    settings = SearchSettings(samples=4, name="search", storage_path=str(tmp_path / "runs"), seed=1, max_failures=0,
                              asha=False)
    outcome = run_search(base, space, settings)
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
    assert best.optim.lr == pytest.approx(top["param.optim.lr"]) and best.peft.prompt_length == 10
    assert best.run_dir is None and best.data.task == "synth/clean"
    # one memory bank for the whole search, built by the driver before the trials
    assert len(list((tmp_path / "cache" / "memory_banks").glob("*.arrow"))) == 1

    # resuming a finished search runs nothing again and loses nothing
    again = run_search(base, space, settings, resume=True)
    assert again.trials == 4
    assert read_trials(folder / "trials.parquet").num_rows == 4
    assert len(pd.read_parquet(folder / "epochs.parquet")) == len(epochs)


def test_resume_without_a_search_is_a_clear_error(local_ray, tmp_path):
    settings = SearchSettings(samples=1, name="nothing", storage_path=str(tmp_path / "runs"))
    with pytest.raises(Exception, match="no search to resume"):
        run_search(_base(tmp_path), _space(tmp_path), settings, resume=True)


def _kill_group_and_ray(process, ray_tmp: str) -> None:
    """SIGKILL the driver's process group and every Ray process of its session folder
    (only this test's: they name `ray_tmp` on their command lines)."""
    import os
    import signal

    import psutil

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if ray_tmp in " ".join(p.info["cmdline"] or [])]
    for p in leftovers:
        p.kill()
    psutil.wait_procs(leftovers, timeout=30)


def test_a_killed_search_driver_resumes_with_every_trial_exactly_once(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(_base(tmp_path).replace(optim={"epochs": 3, "warmup_epochs": 1,
                                                                     "batch_size": 15}).model_dump(mode="json")))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"base": {"mode": "peft"}, "parameters": {
        "optim.lr": {"type": "float", "low": 5.0e-4, "high": 5.0e-3, "log": True}}}))
    command = [sys.executable, "-m", "pointpeft_ray.cli", "tune", str(config), "--space", str(space),
               "--samples", "6", "--no-asha", "--max-concurrent", "1", "--name", "killed", "--storage", str(tmp_path / "runs")]
    trials_file = tmp_path / "runs" / "killed" / "trials.parquet"
    # one trial at a time: several trials' time lies between the kill and the search's end
    ray_tmp = tempfile.mkdtemp(prefix="pr-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if trials_file.is_file() and (pd.read_parquet(trials_file).status == "completed").sum() >= 2:
                break
            time.sleep(0.5)
        assert process.poll() is None, "the search ended before it could be killed"
        finished_before = set(pd.read_parquet(trials_file).query("status == 'completed'").trial_id)
        assert 2 <= len(finished_before) < 6
        _kill_group_and_ray(process, ray_tmp)

        resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        _kill_group_and_ray(process, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    trials = pd.read_parquet(trials_file)  # an independent reader
    assert len(trials) == 6 and trials.trial_id.is_unique
    assert (trials.status == "completed").all(), trials[trials.status != "completed"].error.tolist()
    assert finished_before <= set(trials.trial_id)  # nothing finished before the kill was lost
    epochs = pd.read_parquet(tmp_path / "runs" / "killed" / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()  # no epoch counted twice
    assert sorted(epochs.groupby("trial_id").epoch.apply(sorted).tolist()) == [[1, 2, 3]] * 6
