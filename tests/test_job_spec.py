"""Job specs (jobs/*.yaml): the shipped jobs validate, stages come in execution order,
every error names the file and the place in it, and the configs each stage builds carry
the base, the per-task overrides and the search settings. No Ray, no training."""
import copy
from pathlib import Path

import pytest
import yaml

from pointpeft_ray import assets
from pointpeft_ray.errors import ConfigError
from pointpeft_ray.jobs import JobSpec
from pointpeft_ray.jobs.spec import active_point

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted((REPO / "jobs").glob("*.yaml"))

# A small job with every stage, on the `small` backbone (cpu_demo's `base:` sets it).
BASE = {"mode": "peft", "model": {"preset": "small"},
        "data": {"task": "synth/hardest", "options": {"samples_per_class": 4}},
        "optim": {"epochs": 4, "warmup_epochs": 1, "batch_size": 8}}
JOB = {
    "base": BASE,
    "pretrain": {"settings": {"model": {"preset": "small"}, "optim": {"epochs": 2, "warmup_epochs": 0}}},
    "tune": {"space": "search_spaces/cpu_demo.yaml", "samples": 5, "epochs": 3},
    "finetune": {"tasks": ["synth/clean", "synth/hardest"], "compare": ["published", "full"], "epochs": 6},
    "multitask": [{"name": "clean", "task": "synth/clean"},
                  {"name": "objbg", "task": "synth/objbg", "optim": {"lr": 1.0e-3}}],
}


def write_job(tmp_path, raw, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def changed(**sections):
    """JOB with top-level sections replaced (None removes one)."""
    raw = copy.deepcopy(JOB)
    for key, value in sections.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def error_of(tmp_path, raw) -> str:
    path = write_job(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        JobSpec.from_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# --- the shipped jobs ---

def test_the_documented_jobs_are_shipped():
    assert {p.name for p in JOBS} >= {"quickstart.yaml", "multitask_synth.yaml",
                                      "scanobjectnn_pb_t50_rs.yaml", "modelnet40.yaml"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.stem)
def test_every_shipped_job_validates(path):
    spec = JobSpec.from_yaml(path)
    assert spec.name == path.stem
    assert spec.stage_names()
    for stage in spec.stage_names():
        assert stage in path.read_text()


def test_quickstart_plan():
    spec = JobSpec.from_yaml(REPO / "jobs" / "quickstart.yaml")
    assert spec.stage_names() == ["tune", "finetune"]  # the pre-trained backbone is shipped
    base = spec.train_config()
    assert base.model.preset == "tiny" and Path(base.model.checkpoint) == assets.FOLDER / "tiny-synth-clean.pth"
    assert spec.tune_config().data.task == "synth/hardest"
    # the search starts from the published settings
    assert spec.search_space().default_point(spec.tune_config())["peft.prompt_length"] == 10
    best = {"peft.prompt_length": 6, "peft.neighbours": 4, "peft.memory_bank": False, "optim.lr": 1e-3}
    runs = spec.finetune_runs(best)
    assert len(runs) == 6  # 2 variants x (best, published, full)
    assert {run.task for run in runs} == {"synth/objbg", "synth/hardest"}
    by_label = {run.label: run for run in runs}
    searched = by_label["synth_objbg-best"].config
    assert (searched.peft.prompt_length, searched.peft.memory_bank, searched.optim.lr) == (6, False, 1e-3)
    assert by_label["synth_objbg-published"].config.model_dump()["peft"] == {}  # none of the base's
    full = by_label["synth_objbg-full"].config
    assert full.mode == "full" and full.optim.lr == 1e-3  # its own lr
    assert {run.config.optim.epochs for run in runs} == {base.optim.epochs}
    # PEFT trains at most 5% of the parameters
    from pointpeft_ray.engine.build import build_model, trainable_count

    model = build_model(searched, 15)
    assert trainable_count(model) / sum(p.numel() for p in model.parameters()) <= 0.05


def test_quickstart_and_multitask_synth_share_the_shipped_backbone():
    quickstart = JobSpec.from_yaml(REPO / "jobs" / "quickstart.yaml").train_config()
    multitask = JobSpec.from_yaml(REPO / "jobs" / "multitask_synth.yaml").train_config()
    assert quickstart.model.checkpoint == multitask.model.checkpoint


# --- stages ---

def test_stages_come_in_execution_order_whatever_the_file_order(tmp_path):
    raw = {key: JOB[key] for key in ("multitask", "finetune", "tune", "base")}
    assert JobSpec.from_yaml(write_job(tmp_path, raw)).stage_names() == ["tune", "finetune", "multitask"]
    assert JobSpec.from_yaml(write_job(tmp_path, JOB)).stage_names() == ["pretrain", "tune", "finetune", "multitask"]


def test_a_job_without_stages_is_an_error(tmp_path):
    message = error_of(tmp_path, {"base": BASE})
    assert "no stages" in message and "pretrain, tune, finetune, multitask" in message


# --- errors name the file and the place in it ---

def test_unknown_keys_name_the_nearest_ones(tmp_path):
    raw = changed(tune=None)
    raw["tnue"] = JOB["tune"]
    assert "unknown key(s) 'tnue' (did you mean 'tune'" in error_of(tmp_path, raw)
    assert "tune: unknown key(s) 'sample' (did you mean 'samples'" in error_of(
        tmp_path, changed(tune={**JOB["tune"], "sample": 3}))
    base = copy.deepcopy(BASE)
    base["optim"]["lrr"] = 1.0
    assert "base.optim: unknown key(s) 'lrr' (did you mean 'lr'?)" in error_of(tmp_path, changed(base=base))
    entry = {"name": "c", "task": "synth/clean", "optim": {"lrr": 1.0}}
    message = error_of(tmp_path, changed(multitask=[*JOB["multitask"], entry]))
    assert "multitask[2].optim: unknown key(s) 'lrr' (did you mean 'lr'?)" in message


def test_bad_values_inside_nested_configs_name_their_path(tmp_path):
    entry = {"name": "c", "task": "synth/clean", "optim": {"lr": -1}}
    message = error_of(tmp_path, changed(multitask=[*JOB["multitask"], entry]))
    assert "multitask[2].optim: lr: Input should be greater than 0" in message
    message = error_of(tmp_path, changed(pretrain={"settings": {"mae": {"mask_ratio": 2}}}))
    assert "pretrain.settings.mae: mask_ratio" in message
    message = error_of(tmp_path, changed(runtime_env={"env_vars": {"OMP_NUM_THREADS": 4}}))
    assert "runtime_env: env_vars.OMP_NUM_THREADS: Input should be a valid string" in message
    message = error_of(tmp_path, changed(tune={**JOB["tune"], "epochs": 2}, base={**BASE, "optim": {
        **BASE["optim"], "warmup_epochs": 2}}))
    assert "tune.epochs" in message and "warmup_epochs (2) must be < epochs (2)" in message


def test_unknown_tasks_name_the_entry_and_close_names(tmp_path):
    entry = {"name": "c", "task": "synth/cleen"}
    message = error_of(tmp_path, changed(multitask=[JOB["multitask"][0], entry]))
    assert "multitask[1].task: unknown task 'synth/cleen' (did you mean synth/clean" in message
    message = error_of(tmp_path, changed(finetune={"tasks": ["synth/clean", "synth/hardst"]}))
    assert "finetune.tasks[1]: unknown task 'synth/hardst' (did you mean synth/hardest" in message
    message = error_of(tmp_path, changed(base={**BASE, "data": {"task": "scanobjectnn/pb_t50"}}))
    assert "base.data.task: unknown task 'scanobjectnn/pb_t50' (did you mean scanobjectnn/pb_t50_rs" in message
    entry = {"name": "c", "task": "synth/clean", "options": {"sampels_per_class": 3}}
    message = error_of(tmp_path, changed(multitask=[entry]))
    assert "multitask[0].options: task synth/clean: unknown option(s)" in message


def test_multitask_labels_are_unique(tmp_path):
    entries = [*JOB["multitask"], {"name": "clean", "task": "synth/hardest"}]
    message = error_of(tmp_path, changed(multitask=entries))
    assert "multitask[2].name: 'clean' is already the name of multitask[0]" in message
    message = error_of(tmp_path, changed(multitask=[{"name": "a b", "task": "synth/clean"}]))
    assert "multitask[0]: name: String should match pattern" in message


@pytest.mark.parametrize("gpus", [0, 0.25, 1, 2])
def test_gpus_may_be_a_fraction_or_whole(tmp_path, gpus):
    spec = JobSpec.from_yaml(write_job(tmp_path, changed(tune={**JOB["tune"], "gpus_per_trial": gpus})))
    assert spec.search_settings().gpus_per_trial == gpus


def test_gpus_beyond_one_must_be_whole(tmp_path):
    message = error_of(tmp_path, changed(tune={**JOB["tune"], "gpus_per_trial": 1.5}))
    assert "tune: gpus_per_trial: GPUs must be 0, a fraction in (0, 1] or a whole number (got 1.5)" in message
    entry = {"name": "c", "task": "synth/clean", "gpus": 2.5}
    assert "multitask[0]: gpus: GPUs must be" in error_of(tmp_path, changed(multitask=[entry]))
    assert "resources: gpus: GPUs must be" in error_of(tmp_path, changed(resources={"gpus": -1}))


def test_a_missing_space_file_says_where_it_was_looked_for(tmp_path):
    message = error_of(tmp_path, changed(tune={**JOB["tune"], "space": "search_spaces/nope.yaml"}))
    assert "tune.space: file not found: search_spaces/nope.yaml" in message
    assert str(tmp_path) in message and str(REPO) in message


def test_a_space_that_does_not_fit_the_base_is_an_error(tmp_path):
    # pointpeft_default's grid of prompt depths (2, 4, ...) misses the small preset's 3.
    message = error_of(tmp_path, changed(tune={**JOB["tune"], "space": "search_spaces/pointpeft_default.yaml"}))
    assert "tune.space: " in message and "peft.prompt_depth" in message


def test_the_pretrained_backbone_must_fit_the_runs_that_load_it(tmp_path):
    tiny = changed(pretrain={"settings": {"model": {"preset": "tiny"}}})
    message = error_of(tmp_path, tiny)
    assert "pretrain: its backbone does not fit base" in message and "trans_dim 64 (pretrain) vs 192" in message
    deeper = changed(pretrain={"settings": {"model": {"preset": "small", "backbone": {"depth": 4}}}})
    assert "depth 4 (pretrain) vs 6" in error_of(tmp_path, deeper)
    # The search space's `base:` is part of what a trial loads the weights into.
    untuned = changed(base={**BASE, "model": {"preset": "tiny"}}, finetune=None, multitask=None,
                      pretrain={"settings": {"model": {"preset": "tiny"}}})
    assert "pretrain: its backbone does not fit tune" in error_of(tmp_path, untuned)
    entry = {"name": "tiny", "task": "synth/clean", "model": {"preset": "tiny"}}
    message = error_of(tmp_path, changed(multitask=[entry]))
    assert "pretrain: its backbone does not fit multitask[0]" in message


def test_what_does_not_change_the_weights_may_differ(tmp_path):
    # Another patch count (published: 64 to pre-train, 128 to fine-tune) and a task with
    # its own checkpoint both fit.
    patches = changed(pretrain={"settings": {"model": {"preset": "small", "backbone": {"num_group": 32}}}})
    JobSpec.from_yaml(write_job(tmp_path, patches))
    own = {"name": "tiny", "task": "synth/clean", "model": {"preset": "tiny", "checkpoint": "tiny.pth"}}
    JobSpec.from_yaml(write_job(tmp_path, changed(multitask=[own])))


def test_pretrain_and_a_base_checkpoint_are_exclusive(tmp_path):
    base = {**BASE, "model": {"preset": "small", "checkpoint": "weights.pth"}}
    assert "base.model.checkpoint: the pretrain stage provides the checkpoint" in error_of(tmp_path, changed(base=base))


def test_best_needs_a_search(tmp_path):
    raw = changed(tune=None, finetune={"config": "best"})
    assert "finetune.config: 'best' needs a tune stage" in error_of(tmp_path, raw)


# --- what the stages build ---

def test_task_configs_apply_each_entry_over_the_base(tmp_path):
    entries = [
        {"name": "clean", "task": "synth/clean"},
        {"name": "few", "task": "synth/hardest", "options": {"samples_per_class": 2, "seed": 3}, "mode": "full",
         "peft": {"prompt_length": 6}, "optim": {"lr": 1.0e-3, "epochs": 8}, "gpus": 0.5, "cpus": 2},
    ]
    spec = JobSpec.from_yaml(write_job(tmp_path, changed(base={**BASE, "peft": {"top_k": 2}}, multitask=entries,
                                                         resources={"cpus": 1, "gpus": 0.25})))
    configs = spec.task_configs()
    assert list(configs) == ["clean", "few"]
    clean, few = configs["clean"], configs["few"]
    assert (clean.data.task, clean.data.options, clean.mode) == ("synth/clean", {"samples_per_class": 4}, "peft")
    assert few.data.options == {"samples_per_class": 2, "seed": 3}  # replaced, not merged
    assert few.mode == "full"
    assert few.model_dump()["peft"] == {"prompt_length": 6, "top_k": 2}  # merged over the base's
    assert (few.optim.lr, few.optim.epochs, few.optim.batch_size) == (1.0e-3, 8, 8)
    resources = {run.label: run.resources for run in spec.multitask_runs()}
    assert (resources["clean"].cpus, resources["clean"].gpus) == (1.0, 0.25)
    assert (resources["few"].cpus, resources["few"].gpus) == (2.0, 0.5)


def test_search_settings_carry_the_tune_section(tmp_path):
    tune = {"space": "search_spaces/cpu_demo.yaml", "samples": 7, "epochs": 3, "cpus_per_trial": 2,
            "gpus_per_trial": 0.5, "workers_per_trial": 2, "max_concurrent": 3, "asha": False, "grace_period": 2,
            "multi_objective": True, "max_failures": 0, "seed": 11}
    spec = JobSpec.from_yaml(write_job(tmp_path, changed(tune=tune, storage=str(tmp_path / "out")), "search.yaml"))
    search = spec.search_settings("trials")
    assert (search.samples, search.cpus_per_trial, search.gpus_per_trial, search.workers_per_trial) == (7, 2, 0.5, 2)
    assert (search.max_concurrent, search.asha, search.grace_period, search.seed) == (3, False, 2, 11)
    assert (search.multi_objective, search.max_failures) == (True, 0)
    assert search.experiment_dir() == str(tmp_path / "out" / "search" / "trials")
    assert spec.tune_config().optim.epochs == 3


def test_search_settings_default_from_resources_and_the_job(tmp_path):
    raw = changed(seed=5, resources={"cpus": 2, "gpus": 0.25, "workers": 2, "max_concurrent": 4},
                  storage="s3://bucket/runs/")
    search = JobSpec.from_yaml(write_job(tmp_path, raw)).search_settings()
    assert (search.cpus_per_trial, search.gpus_per_trial, search.workers_per_trial) == (2, 0.25, 2)
    assert (search.max_concurrent, search.seed, search.name) == (4, 5, "tune")
    assert search.storage_path == "s3://bucket/runs/job"


def test_finetune_runs_need_the_best_point_and_keep_only_its_active_values(tmp_path):
    spec = JobSpec.from_yaml(write_job(tmp_path, JOB))
    with pytest.raises(ConfigError, match="best parameters"):
        spec.finetune_runs()
    row = {"trial_id": "t1", "status": "completed", "peft.prompt_length": 8, "peft.neighbours": 4,
           "peft.memory_bank": False, "peft.top_k": float("nan"), "optim.lr": 5.0e-4}
    assert active_point(spec.search_space(), row) == {"peft.prompt_length": 8, "peft.neighbours": 4,
                                                      "peft.memory_bank": False, "optim.lr": 5.0e-4}
    runs = spec.finetune_runs(row)
    assert [run.label for run in runs] == ["synth_clean-best", "synth_clean-published", "synth_clean-full",
                                           "synth_hardest-best", "synth_hardest-published", "synth_hardest-full"]
    assert all(run.config.optim.epochs == 6 for run in runs)
    assert runs[0].config.peft.prompt_length == 8 and runs[0].config.data.task == "synth/clean"


def test_baseline_overrides_merge_into_that_baseline_only(tmp_path):
    finetune = {**JOB["finetune"], "overrides": {"full": {"optim": {"lr": 1.0e-3}}}}
    spec = JobSpec.from_yaml(write_job(tmp_path, changed(finetune=finetune)))
    row = {"trial_id": "t1", "status": "completed", "peft.prompt_length": 8, "peft.neighbours": 4,
           "peft.memory_bank": False, "optim.lr": 5.0e-4}
    by_label = {run.label: run.config for run in spec.finetune_runs(row)}
    full = by_label["synth_clean-full"]
    assert full.optim.lr == 1.0e-3 and full.optim.batch_size == 8 and full.optim.epochs == 6  # merged, not replaced
    assert by_label["synth_clean-published"].optim.lr == BASE["optim"].get("lr", 5e-4)
    assert by_label["synth_clean-best"].optim.lr == 5.0e-4
    message = error_of(tmp_path, changed(finetune={**JOB["finetune"], "overrides": {"linear": {"mode": "full"}}}))
    assert "overrides: linear not in compare ['published', 'full']" in message


def test_with_pretrained_fills_the_checkpoint_where_none_is_given(tmp_path):
    own = {"name": "own", "task": "synth/clean", "model": {"checkpoint": "own.pth"}}
    spec = JobSpec.from_yaml(write_job(tmp_path, changed(multitask=[*JOB["multitask"], own])))
    assert spec.train_config().model.checkpoint is None
    loaded = spec.with_pretrained("/cache/pretrain.pth")
    assert loaded.train_config().model.checkpoint == "/cache/pretrain.pth"
    assert loaded.tune_config().model.checkpoint == "/cache/pretrain.pth"
    configs = loaded.task_configs()
    assert configs["clean"].model.checkpoint == "/cache/pretrain.pth"
    assert configs["own"].model.checkpoint == "own.pth"
    assert spec.train_config().model.checkpoint is None  # a copy


def test_relative_files_are_found_beside_the_job_first(tmp_path):
    own_space = tmp_path / "search_spaces" / "cpu_demo.yaml"
    own_space.parent.mkdir()
    own_space.write_text((REPO / "search_spaces" / "cpu_demo.yaml").read_text())
    assert JobSpec.from_yaml(write_job(tmp_path, JOB)).tune.space == str(own_space)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = JobSpec.from_yaml(write_job(elsewhere, JOB))
    assert spec.tune.space == str(REPO / "search_spaces" / "cpu_demo.yaml")


def test_pretrain_file_shorthand_and_settings(tmp_path):
    raw = changed(base={**BASE, "model": {"preset": "small"}}, tune=None, finetune=None, multitask=None,
                  pretrain="configs/pretrain_synth_small.yaml")
    spec = JobSpec.from_yaml(write_job(tmp_path, raw))
    assert spec.pretrain.config == str(REPO / "configs" / "pretrain_synth_small.yaml")
    assert spec.pretrain_config().optim.epochs == 30
    raw["pretrain"] = {"config": "configs/pretrain_synth_small.yaml", "settings": {"optim": {"epochs": 5}}, "gpus": 1}
    spec = JobSpec.from_yaml(write_job(tmp_path, raw))
    assert (spec.pretrain_config().optim.epochs, spec.pretrain_config().optim.batch_size) == (5, 32)
    assert spec.pretrain_resources().gpus == 1


def test_runtime_env_for_ray(tmp_path):
    raw = changed(runtime_env={"pip": ["optuna>=3.6"], "env_vars": {"A": "1"}, "working_dir": "."})
    env = JobSpec.from_yaml(write_job(tmp_path, raw)).runtime_env.to_ray()
    assert env == {"pip": ["optuna>=3.6"], "env_vars": {"A": "1"}, "working_dir": str(tmp_path)}
    assert "runtime_env: pip: Input should be a valid list" in error_of(tmp_path, changed(runtime_env={"pip": "x"}))
