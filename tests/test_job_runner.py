"""`pointpeft-ray run JOB.yaml` on a real local Ray: every stage in order, the tables,
the adapter bank and the report it leaves, a rerun that resumes instead of training
again, and the errors a user can hit."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pointpeft_ray.cli import main
from pointpeft_ray.errors import PointPEFTError
from pointpeft_ray.jobs import JobSpec
from pointpeft_ray.jobs.runner import run_job
from tests.conftest import logged

SMALL_DATA = {"samples_per_class": 4, "points": 256}


def tiny_job(tmp_path, **changes) -> dict:
    """Every stage on the `tiny` backbone and 60-cloud synthetic tasks."""
    cache = str(tmp_path / "cache")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "base": {"mode": "peft", "peft": {"memory_bank": False}},
        "parameters": {"peft.prompt_length": {"type": "int", "low": 4, "high": 8, "step": 2},
                       "optim.lr": {"type": "float", "low": 2.0e-4, "high": 2.0e-3, "log": True}}}))
    job = {
        "storage": str(tmp_path / "runs"),
        "base": {"mode": "peft", "model": {"preset": "tiny"},
                 "data": {"task": "synth/hardest", "options": SMALL_DATA, "cache_dir": cache},
                 "optim": {"epochs": 1, "warmup_epochs": 0, "batch_size": 15}},
        "pretrain": {"settings": {"model": {"preset": "tiny"},
                                  "data": {"task": "synth/clean", "options": SMALL_DATA, "cache_dir": cache},
                                  "optim": {"epochs": 1, "warmup_epochs": 0, "batch_size": 15}}},
        "tune": {"space": "space.yaml", "samples": 2, "epochs": 1},
        "finetune": {"tasks": ["synth/clean", "synth/hardest"], "compare": ["published", "full"], "epochs": 2},
        "multitask": [{"name": "objbg", "task": "synth/objbg"},
                      {"name": "broken", "task": "scanobjectnn/obj_bg", "root": str(tmp_path / "no-such-folder"),
                       "options": {}}],
        "resources": {"cpus": 1, "max_concurrent": 2},
    }
    job.update(changes)
    return job


def write(tmp_path, job: dict, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def test_a_job_runs_every_stage_and_a_rerun_resumes(local_ray, tmp_path, capsys):
    path = write(tmp_path, tiny_job(tmp_path))
    assert main(["run", str(path), "--json", str(tmp_path / "outcome.json")]) == 0
    assert "[job] tiny done in" in capsys.readouterr().out
    job_dir = tmp_path / "runs" / "tiny"
    summary = json.loads((job_dir / "job_summary.json").read_text())
    assert summary["stages"] == ["pretrain", "tune", "finetune", "multitask"] and summary["status"] == "completed"
    assert set(summary["stage_seconds"]) == {"pretrain", "tune", "finetune", "multitask", "report"}
    assert JobSpec.from_dict(yaml.safe_load((job_dir / "job.yaml").read_text())).name == "tiny"

    # the search, then the best point fine-tuned on every task beside the baselines
    trials = pd.read_parquet(job_dir / "tune" / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "completed").all()
    best = trials.sort_values(["best_accuracy", "best_loss"], ascending=[False, True]).iloc[0]
    finetune = pd.read_parquet(job_dir / "finetune" / "tasks.parquet")
    assert sorted(zip(finetune.task_name, finetune.variant)) == sorted(
        (task, variant) for task in ("synth/clean", "synth/hardest") for variant in ("best", "published", "full"))
    assert (finetune.status == "completed").all() and (finetune.epochs == 2).all()
    for row in finetune.itertuples():
        config = json.loads(row.config)
        assert config["model"]["checkpoint"] == summary["pretrained"]  # every run starts from the pre-training
        if row.variant == "best":
            assert config["peft"]["prompt_length"] == best["param.peft.prompt_length"]
            assert config["optim"]["lr"] == pytest.approx(best["param.optim.lr"])
        assert pd.isna(row.adapter_path) == (row.variant == "full")
    full, best_run = (finetune[finetune.variant == v].trainable_params.iloc[0] for v in ("full", "best"))
    assert best_run < full / 3

    # multi-task: the broken task is recorded, the other finished
    tasks = pd.read_parquet(job_dir / "multitask" / "tasks.parquet").set_index("task")
    assert tasks.loc["objbg", "status"] == "completed" and tasks.loc["broken", "status"] == "failed"
    assert "no-such-folder" in tasks.loc["broken", "error"]

    # the adapter bank holds every PEFT run that finished; the report compares them
    index = json.loads((job_dir / "adapters" / "index.json").read_text())
    assert sorted(index["entries"]) == sorted(["objbg"] + [f"synth_{t}-{v}" for t in ("clean", "hardest")
                                                          for v in ("best", "published")])
    # ... and serves them: each adapter on the pre-trained backbone repeats its recorded accuracy
    capsys.readouterr()
    assert main(["predict", "--bank", str(job_dir / "adapters"), "--task", "all", "--test-split", "--quiet"]) == 0
    served = capsys.readouterr().out
    assert served.count("recorded at training") == 5 and "backbone built 1 time(s)" in served
    for line in (line for line in served.splitlines() if "recorded at training" in line):
        accuracy, recorded = line.split("accuracy ")[1].split(" ")[0], line.rsplit(" ", 1)[1]
        assert accuracy == recorded, line
    report = (job_dir / "report" / "report.txt").read_text()
    assert "best - published" in report and "best - full" in report and "leaderboard" in report
    assert (job_dir / "report" / "comparison.png").read_bytes()[:4] == b"\x89PNG"

    # a rerun resumes: the same search, the same runs, no epoch trained twice
    assert main(["run", str(path)]) == 0
    assert len(pd.read_parquet(job_dir / "tune" / "trials.parquet")) == 2
    again = pd.read_parquet(job_dir / "finetune" / "tasks.parquet")
    assert sorted(again.best_accuracy) == sorted(finetune.best_accuracy)
    epochs = pd.read_parquet(job_dir / "finetune" / "epochs.parquet")
    assert len(epochs) == 6 * 2 and not epochs.duplicated(["trial_id", "epoch"]).any()


def test_a_search_without_a_finished_trial_names_the_trials_error(local_ray, tmp_path):
    # prompt lengths 4 and 6 leave room for a top_k of 4 at most; the preset asks for 8
    job = tiny_job(tmp_path, finetune=None, multitask=None, pretrain=None, report=False)
    (tmp_path / "bad_space.yaml").write_text(yaml.safe_dump(
        {"parameters": {"peft.prompt_length": {"type": "int", "low": 4, "high": 6, "step": 2}}}))
    job["tune"] = {"space": "bad_space.yaml", "samples": 1, "epochs": 1}
    with pytest.raises(PointPEFTError, match=r"tune: no trial finished .*top_k"):
        run_job(JobSpec.from_yaml(write(tmp_path, job)))
    # the job's summary says so: nothing in its folder passes for a finished job
    summary = json.loads((tmp_path / "runs" / "tiny" / "job_summary.json").read_text())
    assert summary["status"] == "failed" and "no trial finished" in summary["error"]


def test_a_job_with_uri_storage_keeps_everything_there_and_resumes_from_it(local_ray, tmp_path, monkeypatch):
    """pyarrow.fs URI storage (file:// here; s3:// or gs:// the same way): the search writes
    there, the runs upload their folders, and a rerun from an empty working copy resumes."""
    monkeypatch.setenv("POINTPEFT_CACHE", str(tmp_path / "local-cache"))  # the driver's working copy
    remote = tmp_path / "bucket"
    job = tiny_job(tmp_path, storage=f"file://{remote}", finetune=None,
                   multitask=[{"name": "objbg", "task": "synth/objbg"}, {"name": "clean", "task": "synth/clean"}])
    job["tune"]["samples"] = 1
    path = write(tmp_path, job, "remote.yaml")
    outcome = run_job(JobSpec.from_yaml(path))
    job_uri = tmp_path / "bucket" / "remote"
    assert outcome.job_dir == f"file://{job_uri}"
    tasks = pd.read_parquet(job_uri / "multitask" / "tasks.parquet")
    assert sorted(tasks.status) == ["completed", "completed"]
    for label in ("objbg", "clean"):
        assert (job_uri / "multitask" / label / "best" / "adapter" / "adapter_config.json").is_file()
    assert len(pd.read_parquet(job_uri / "tune" / "trials.parquet")) == 1
    assert "# Best trial" in (job_uri / "tune" / "best_config.yaml").read_text()  # written at the URI itself
    assert not any(p.name.startswith("file:") for p in Path.cwd().iterdir())  # ... not under a mangled path
    index = json.loads((job_uri / "adapters" / "index.json").read_text())
    assert sorted(index["entries"]) == ["clean", "objbg"]
    assert "leaderboard" in (job_uri / "report" / "report.txt").read_text()
    assert json.loads((job_uri / "job_summary.json").read_text())["stages"] == ["pretrain", "tune", "multitask"]

    # another machine: no working copy, only the URI; the rerun resumes, nothing trains twice
    import shutil

    shutil.rmtree(tmp_path / "local-cache" / "jobs")
    with logged() as lines:
        run_job(JobSpec.from_yaml(path))
    assert any(line.startswith("[job] resuming from file://") for line in lines)
    again = pd.read_parquet(job_uri / "multitask" / "tasks.parquet")
    assert sorted(again.best_accuracy) == sorted(tasks.best_accuracy)
    epochs = pd.read_parquet(job_uri / "multitask" / "epochs.parquet")
    assert len(epochs) == 2 and not epochs.duplicated(["trial_id", "epoch"]).any()
