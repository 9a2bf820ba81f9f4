"""JobSpec: one validated file for a whole job (jobs/*.yaml; format in jobs/README.md).

Stages run in this order, each optional (at least one): `pretrain` (Point-MAE weights,
cached by their settings), `tune` (Ray Tune + Optuna around `base`), `finetune` (the
best point, or the base, on each task, with baselines beside it), `multitask` (several
tasks in parallel, each the base plus its own changes). `base` is the TrainConfig every
run starts from.

Checked when the file is read, before any work: every section and every config the job
will run (named by its place in the file, e.g. `multitask[2].optim: lr: ...`), task
names, labels, GPU counts, the search space against the base, and that the pre-trained
backbone fits every run that loads it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from pydantic import Field, PrivateAttr, field_serializer, model_validator

from ..configuration import StrictConfig, at, read_yaml_mapping
from ..data.tasks import get_task
from ..distributed.tune import SearchSettings
from ..engine.config import TrainConfig
from ..errors import ConfigError, PointPEFTError
from ..models.backbone import BackboneConfig
from ..pretrain.config import PretrainConfig
from ..results.storage import is_uri, join
from ..results.tables import param_column
from ..search.parameters import FixedParameter
from ..search.paths import deep_merge
from ..search.space import SearchSpace
from .paths import resolve_reference
from .sections import (FinetuneSection, Label, PretrainSection, ResourcesSection, RuntimeEnvSection,
                       TaskEntry, TuneSection)

STAGES = ("pretrain", "tune", "finetune", "multitask")
# Baselines a fine-tune can run beside its chosen config. `published`: Point-PEFT as
# the published code trains it (recipe and PEFT behaviour; sizes scaled by the preset),
# whatever the base's peft section and recipe say.
BASELINES: dict[str, dict] = {"published": {"mode": "peft", "peft": {}, "recipe": "published"},
                              "full": {"mode": "full"}, "linear": {"mode": "linear"}}
# Backbone fields that decide the shapes (or, for heads, the meaning) of pre-trained
# weights. The patch count and size do not: the published runs pre-train on 64 patches
# and fine-tune on 128.
WEIGHT_FIELDS = ("trans_dim", "depth", "num_heads", "encoder_dims", "mlp_ratio")
# Stands in for the pre-trained checkpoint while checking which runs would load it.
_PRETRAINED = "<pretrained>"


@dataclass(frozen=True)
class RunResources:
    workers: int  # Ray Train workers (DDP)
    cpus: float  # per worker
    gpus: float  # per worker: 0, a fraction in (0, 1] or a whole number


@dataclass(frozen=True)
class PlannedRun:
    """One fine-tune a stage runs: its label is unique within the stage (a folder name)."""

    stage: str  # finetune | multitask
    label: str
    task: str
    variant: str  # finetune: best | base | published | full | linear; multitask: the entry's name
    config: TrainConfig
    resources: RunResources


class JobSpec(StrictConfig):
    """A job file, checked. `JobSpec(**mapping)` checks the file's own content;
    from_yaml / from_dict also resolve the files it names and check what they hold."""

    name: Label = Field(description="the job's folder under storage (from_yaml: default the file's stem)")
    description: Optional[str] = None
    storage: str = Field("runs", description="local folder (relative: to where the job runs) or pyarrow.fs URI")
    seed: int = Field(0, description="TPE seed, and every run's seed unless base / pretrain set one")
    base: TrainConfig = Field(default_factory=TrainConfig, description="the TrainConfig every run starts from")
    pretrain: Optional[PretrainSection] = None
    tune: Optional[TuneSection] = None
    finetune: Optional[FinetuneSection] = None
    multitask: Optional[list[TaskEntry]] = Field(None, min_length=1)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    runtime_env: RuntimeEnvSection = Field(default_factory=RuntimeEnvSection)
    report: bool = Field(True, description="write the job's report (tables, plots) at the end")
    # Set by with_pretrained: the pre-trained weights every run without its own checkpoint loads.
    _pretrained: Optional[str] = PrivateAttr(None)

    @field_serializer("base")
    def _base_as_given(self, base: TrainConfig) -> dict:
        # What the file said: the job's seed stays every run's seed unless base sets one.
        return base.model_dump(exclude_unset=True)

    @model_validator(mode="after")
    def _consistent(self):
        if not self.stage_names():
            raise ValueError(f"no stages: add at least one of {', '.join(STAGES)}")
        base = self.train_config()
        check_task(base.data.task, base.data.options, "base.data.task", "base.data.options")
        if self.pretrain is not None and base.model.checkpoint:
            raise ValueError("base.model.checkpoint: the pretrain stage provides the checkpoint; "
                             "remove one of them")
        if self.tune is not None:
            self.tune_config()
        if self.finetune is not None:
            self._check_finetune(base)
        if self.multitask:
            self._check_multitask()
        return self

    # --- loading ---

    @classmethod
    def from_yaml(cls, path: str | Path) -> "JobSpec":
        """Read, check and resolve a job file; errors start with the file's path."""
        path = Path(path)
        raw = read_yaml_mapping(path)
        raw.setdefault("name", path.stem)
        return cls.from_dict(raw, where=str(path), job_dir=path.parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None,
                  job_dir: str | Path | None = None) -> "JobSpec":
        """Check the mapping, resolve its file references against `job_dir` (see
        jobs/paths.py) and check what they refer to; errors start with `where`."""
        spec = super().from_dict(data, where=where)
        try:
            return spec.resolve_paths(job_dir).check_references()
        except ConfigError as err:
            raise ConfigError(at(where or "", str(err))) from None

    def resolve_paths(self, job_dir: str | Path | None) -> "JobSpec":
        """A copy whose file references (tune.space, pretrain.config, runtime_env.working_dir
        when it is found) are absolute: looked up in `job_dir`, then the repository root,
        then the current directory."""
        folder = Path(job_dir) if job_dir is not None else None
        changes: dict[str, Any] = {}
        if self.tune is not None:
            space = resolve_reference(self.tune.space, folder, "tune.space")
            changes["tune"] = self.tune.replace(space=space)
        if self.pretrain is not None and self.pretrain.config:
            config = resolve_reference(self.pretrain.config, folder, "pretrain.config")
            changes["pretrain"] = self.pretrain.replace(config=config)
        if self.runtime_env.working_dir:
            # Left as written when it is not found: only `submit` uploads it (and checks it then);
            # on the cluster, `run` reads the same file where that folder has already been uploaded.
            with contextlib.suppress(ConfigError):
                working_dir = resolve_reference(self.runtime_env.working_dir, folder, "runtime_env.working_dir",
                                                "folder")
                changes["runtime_env"] = self.runtime_env.replace(working_dir=working_dir)
        if not changes:
            return self
        job = self.replace(**changes)
        job._pretrained = self._pretrained  # not a field: replace() would drop it
        return job

    def check_references(self) -> "JobSpec":
        """What the files it names make of the job: the space fits the base, the
        pre-training loads and fits every run that starts from it, each fine-tune builds."""
        if self.tune is not None:
            self._check_space(self.search_space())
        if self.finetune is not None:
            self.finetune_runs(self._stand_in_best())
        if self.pretrain is not None:
            self._check_pretrain_fits(self.pretrain_config())
        return self

    # --- the job as a whole ---

    def stage_names(self) -> list[str]:
        """The stages this job runs, in execution order."""
        return [stage for stage in STAGES if getattr(self, stage) is not None]

    def job_storage(self) -> str:
        """Where the job keeps everything: STORAGE/NAME (a URI stays a URI)."""
        return join(self.storage if is_uri(self.storage) else Path(self.storage).expanduser().resolve(), self.name)

    def max_concurrent(self, stage: str) -> Optional[int]:
        """Runs of `stage` at once (None: what the cluster fits)."""
        section = getattr(self, stage) if stage in ("tune", "finetune") else None
        own = section.max_concurrent if section is not None else None
        return _first(own, self.resources.max_concurrent)

    def pretrain_resources(self) -> RunResources:
        """Workers, CPUs and GPUs (per worker) of the pre-training run."""
        if self.pretrain is None:
            raise ConfigError("pretrain: this job has no pretrain stage")
        return self._resources(self.pretrain.workers, self.pretrain.cpus, self.pretrain.gpus)

    def train_config(self) -> TrainConfig:
        """The validated base TrainConfig (the job's seed unless base sets one)."""
        return TrainConfig.from_dict(self._base_fields(), path="base")

    def with_pretrained(self, checkpoint: str | Path) -> "JobSpec":
        """A copy whose runs start from `checkpoint` (ensure_pretrained's path): every config
        it builds has it as model.checkpoint, unless the config names its own."""
        job = self.model_copy()
        job._pretrained = str(checkpoint)
        return job

    def _base_fields(self) -> dict:
        """What every run starts from: the job's seed, `base`, the pre-trained checkpoint."""
        fields = {"seed": self.seed, **self.base.model_dump(exclude_unset=True)}
        if self._pretrained is not None:
            fields = deep_merge(fields, {"model": {"checkpoint": self._pretrained}})
        return fields

    # --- pretrain ---

    def pretrain_config(self) -> PretrainConfig:
        """The pre-training: the `config` file's fields, then `settings` (the job's seed
        unless they set one)."""
        if self.pretrain is None:
            raise ConfigError("pretrain: this job has no pretrain stage")
        fields: dict = {}
        if self.pretrain.config:
            try:
                PretrainConfig.from_yaml(self.pretrain.config)  # its own errors name its file
            except ConfigError as err:
                raise ConfigError(at("pretrain.config", str(err))) from None
            fields = read_yaml_mapping(Path(self.pretrain.config))
        merged = deep_merge({"seed": self.seed, **fields}, self.pretrain.settings)
        # An error here comes from the settings, or from them together with the file.
        where = "pretrain.settings" if not self.pretrain.config else f"pretrain ({self.pretrain.config} + settings)"
        config = PretrainConfig.from_dict(merged, path=where)
        check_task(config.data.task, config.data.options, f"{where}: data.task", f"{where}: data.options")
        return config

    def _check_pretrain_fits(self, pretrain: PretrainConfig) -> None:
        weights = pretrain.model.backbone
        for where, config in self.with_pretrained(_PRETRAINED)._planned_configs():
            if config.model.checkpoint != _PRETRAINED:
                continue  # it names its own checkpoint
            differences = _weight_differences(weights, config.model.backbone)
            if differences:
                raise ConfigError(
                    f"pretrain: its backbone does not fit {where}, which starts from its weights: "
                    f"{differences}; give both the same model preset and backbone overrides "
                    f"(pretrain: preset {pretrain.model.preset!r}, {where}: preset {config.model.preset!r})")

    def _planned_configs(self) -> Iterator[tuple[str, TrainConfig]]:
        """(where in the file, config) for every config the job trains."""
        yield "base", self.train_config()
        if self.tune is not None:
            yield "tune", self.search_space().base_config(self.tune_config())
        if self.finetune is not None:
            for run in self.finetune_runs(self._stand_in_best()):
                yield f"finetune ({run.label})", run.config
        for index, config in enumerate(self.task_configs().values()):
            yield f"multitask[{index}]", config

    # --- tune ---

    def search_space(self) -> SearchSpace:
        if self.tune is None:
            raise ConfigError("tune: this job has no tune stage")
        try:
            return SearchSpace.from_yaml(self.tune.space)
        except ConfigError as err:
            raise ConfigError(at("tune.space", str(err))) from None

    def tune_config(self) -> TrainConfig:
        """The search's base: base, then tune.overrides, then tune.epochs (the most a trial trains)."""
        if self.tune is None:
            raise ConfigError("tune: this job has no tune stage")
        config = TrainConfig.from_dict(deep_merge(self._base_fields(), self.tune.overrides), path="tune.overrides")
        return _with_epochs(config, self.tune.epochs, "tune.epochs")

    def search_settings(self, experiment_name: str | None = None) -> SearchSettings:
        """distributed.tune.SearchSettings for the search, kept in JOB_STORAGE/`experiment_name`
        (default `tune`)."""
        tune, defaults = self.tune, self.resources
        if tune is None:
            raise ConfigError("tune: this job has no tune stage")
        return SearchSettings(
            samples=tune.samples, name=experiment_name or "tune", storage_path=self.job_storage(),
            cpus_per_trial=_first(tune.cpus_per_trial, defaults.cpus),
            gpus_per_trial=_first(tune.gpus_per_trial, defaults.gpus),
            workers_per_trial=_first(tune.workers_per_trial, defaults.workers),
            max_concurrent=self.max_concurrent("tune"), seed=_first(tune.seed, self.seed), asha=tune.asha,
            grace_period=tune.grace_period, multi_objective=tune.multi_objective, max_failures=tune.max_failures)

    def _check_space(self, space: SearchSpace) -> None:
        """The space's base and its default point (or no searched value) on this job's base."""
        base = self.tune_config()
        try:
            space.apply(base, space.default_point(base) or {})
        except ConfigError as err:
            raise ConfigError(at("tune.space", str(err))) from None

    def _stand_in_best(self) -> Optional[dict]:
        """What validation fine-tunes in place of the best point: the space's default point."""
        if self._finetune_choice() != "best":
            return None
        return self.search_space().default_point(self.tune_config()) or {}

    # --- finetune ---

    def finetune_tasks(self) -> list[str]:
        if self.finetune is None:
            return []
        return list(self.finetune.tasks) or [self.train_config().data.task]

    def _finetune_choice(self) -> Optional[str]:
        if self.finetune is None:
            return None
        return self.finetune.config or ("best" if self.tune is not None else "base")

    def finetune_runs(self, best_params: Optional[Mapping[str, Any]] = None) -> list[PlannedRun]:
        """Each finetune task x (the chosen config, then each `compare` baseline).

        `best_params`: the search's best point by parameter path (a trials-table row will
        do: other columns, inactive and missing values are left out); needed when the
        chosen config is `best`. With a tune stage every config includes the space's
        `base:`, as the trials did; finetune.epochs is set last."""
        section, choice = self.finetune, self._finetune_choice()
        if section is None:
            raise ConfigError("finetune: this job has no finetune stage")
        if choice == "best" and best_params is None:
            raise ConfigError("finetune: fine-tuning the best config needs the search's best parameters")
        space = self.search_space() if self.tune is not None else None
        resources = self._resources(section.workers, section.cpus, section.gpus)
        runs = []
        for index, task in enumerate(self.finetune_tasks()):
            where = f"finetune.tasks[{index}]" if section.tasks else "finetune"
            for variant, config in self._finetune_variants(task, choice, space, best_params, where):
                label = f"{task.replace('/', '_')}-{variant}"
                config = _with_epochs(config, section.epochs, f"finetune.epochs ({label})")
                runs.append(PlannedRun("finetune", label, task, variant, config, resources))
        return runs

    def _finetune_variants(self, task: str, choice: str, space: Optional[SearchSpace],
                           best_params: Optional[Mapping], where: str) -> Iterator[tuple[str, TrainConfig]]:
        on_task = TrainConfig.from_dict(deep_merge(self._base_fields(), {"data": {"task": task}}), path=where)
        foundation = space.base_config(on_task) if space is not None else on_task
        if choice == "best":
            try:
                best = space.apply(on_task, active_point(space, best_params))
            except ConfigError as err:
                raise ConfigError(at("finetune (best point)", str(err))) from None
            yield "best", best
        else:
            yield "base", foundation
        for baseline in self.finetune.compare:
            fields = deep_merge({**foundation.model_dump(), **BASELINES[baseline]},
                               self.finetune.overrides.get(baseline, {}))
            yield baseline, TrainConfig.from_dict(fields, path=f"finetune.compare ({baseline} on {task})")

    def _check_finetune(self, base: TrainConfig) -> None:
        if self.finetune.config == "best" and self.tune is None:
            raise ConfigError("finetune.config: 'best' needs a tune stage (or use 'base')")
        for index, task in enumerate(self.finetune.tasks):
            where = f"finetune.tasks[{index}]"
            check_task(task, base.data.options, where, f"base.data.options (for {where})")

    # --- multitask ---

    def task_configs(self) -> dict[str, TrainConfig]:
        """Each multitask entry's TrainConfig by its name: the base with the entry's changes."""
        base = self._base_fields()
        return {entry.name: TrainConfig.from_dict(entry.applied_to(base), path=f"multitask[{index}]")
                for index, entry in enumerate(self.multitask or [])}

    def multitask_runs(self) -> list[PlannedRun]:
        runs = []
        for (name, config), entry in zip(self.task_configs().items(), self.multitask or []):
            resources = self._resources(entry.workers, entry.cpus, entry.gpus)
            runs.append(PlannedRun("multitask", name, entry.task, name, config, resources))
        return runs

    def _check_multitask(self) -> None:
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.multitask):
            if entry.name in seen:
                raise ConfigError(f"multitask[{index}].name: {entry.name!r} is already the name of "
                                  f"multitask[{seen[entry.name]}]; names must be unique")
            seen[entry.name] = index
        for index, (entry, config) in enumerate(zip(self.multitask, self.task_configs().values())):
            options_from = f"multitask[{index}].options" if entry.options is not None else "base.data.options"
            check_task(entry.task, config.data.options, f"multitask[{index}].task", options_from)

    def _resources(self, workers: Optional[int], cpus: Optional[float], gpus: Optional[float]) -> RunResources:
        """A stage's own values, else the `resources` defaults."""
        defaults = self.resources
        return RunResources(workers=_first(workers, defaults.workers), cpus=_first(cpus, defaults.cpus),
                            gpus=_first(gpus, defaults.gpus))


def active_point(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    """The searched values of `params` that the space would have sampled: in file order,
    only parameters whose `when:` holds, without fixed ones, missing or NaN values.
    `params` is keyed by parameter path, or by trials-table column (a row of it)."""
    point: dict[str, Any] = {}
    for parameter in space.parameters:
        value = params.get(parameter.path, params.get(param_column(parameter.path)))
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        if isinstance(parameter, FixedParameter) or missing:
            continue
        if parameter.is_active(point):
            point[parameter.path] = value
    return point


def _weight_differences(pretrained: BackboneConfig, run: BackboneConfig) -> str:
    different = [f"{name} {getattr(pretrained, name)} (pretrain) vs {getattr(run, name)}"
                 for name in WEIGHT_FIELDS if getattr(pretrained, name) != getattr(run, name)]
    return ", ".join(different)


def _with_epochs(config: TrainConfig, epochs: Optional[int], where: str) -> TrainConfig:
    if epochs is None:
        return config
    return TrainConfig.from_dict(deep_merge(config.model_dump(), {"optim": {"epochs": epochs}}), path=where)


def check_task(name: str, options: Optional[Mapping], task_path: str, options_path: str) -> None:
    """The task is in the registry (else the nearest names) and takes these options."""
    try:
        spec = get_task(name)
    except PointPEFTError as err:  # DataFormatError from the registry
        raise ConfigError(at(task_path, str(err))) from None
    try:
        spec.with_options(**dict(options or {}))
    except PointPEFTError as err:
        raise ConfigError(at(options_path, str(err))) from None


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value
