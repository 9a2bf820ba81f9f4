"""`pointpeft-ray bench search` on a job's search stage: the three methods run the same
trials and budget on a real local Ray, and the figures land in the JSON file."""
import json

import pytest

from pointpeft_ray.bench.search import run_bench, setup_from_job
from pointpeft_ray.errors import ConfigError

from .test_job_runner import tiny_job, write


def test_bench_search_runs_a_jobs_search_three_ways(local_ray, tmp_path):
    job = tiny_job(tmp_path, tune={"space": "space.yaml", "samples": 3, "epochs": 2, "grace_period": 1})
    setup = setup_from_job(write(tmp_path, job))
    assert (setup.trials, setup.base.optim.epochs, setup.grace_period) == (3, 2, 1)
    assert setup.base.model.checkpoint and (tmp_path / "cache" / "pretrained").is_dir()  # the job's pre-training

    out = tmp_path / "bench.json"
    payload = run_bench(setup, json_path=str(out))

    methods = payload["methods"]
    assert {name: m["trials"] for name, m in methods.items()} == {"ray_tune": 3, "optuna": 3, "random": 3}
    assert methods["random"]["epochs"] == 6  # no early stopping: every trial runs its 2 epochs
    for name in ("ray_tune", "optuna"):
        assert 3 <= methods[name]["epochs"] <= 6  # each trial passes the grace period, none runs more
    for m in methods.values():  # the default target is a level every method reached
        assert m["best_accuracy"] >= payload["target"] and m["seconds_to_target"] is not None
    assert len(payload["ray_trial_setup_seconds"]) == 3
    written = json.loads(out.read_text())
    assert written["ratio_wall_ray_vs_optuna"] == pytest.approx(
        methods["ray_tune"]["wall_seconds"] / methods["optuna"]["wall_seconds"])
    assert written["grace_period"] == 1 and written["preset"] == "tiny"


def test_bench_search_needs_a_job_with_a_tune_stage(tmp_path):
    job = tiny_job(tmp_path)
    del job["tune"], job["finetune"]
    path = write(tmp_path, job, "no_tune.yaml")
    with pytest.raises(ConfigError, match="no_tune.yaml: the job has no tune stage"):
        setup_from_job(path)
