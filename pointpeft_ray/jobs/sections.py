"""The sections of a job file (see jobs/README.md for the format).

Each one checks only itself; what needs several sections (a task's config is the
base plus its overrides, a pre-training must fit the runs that load it) is checked by
JobSpec.
"""
from __future__ import annotations

from typing import Annotated, Literal, Mapping, Optional

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from ..configuration import NAME_MAX_LENGTH, NAME_PATTERN, StrictConfig
from ..search.paths import deep_merge

Mode = Literal["peft", "full", "linear"]
# Run labels become folder and Ray run names.
Label = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]
Cpus = Annotated[float, Field(gt=0)]


def _whole_or_fraction(value: float) -> float:
    # Ray shares a GPU only in fractions of one; beyond one it hands out whole GPUs.
    if value < 0 or (value > 1 and not float(value).is_integer()):
        raise ValueError("GPUs must be 0, a fraction in (0, 1] or a whole number")
    return value


Gpus = Annotated[float, AfterValidator(_whole_or_fraction)]


class ResourcesSection(StrictConfig):
    """Defaults for every stage; a stage's own fields override them."""

    cpus: Cpus = Field(1.0, description="CPUs per trial / task (per worker when a run has several)")
    gpus: Gpus = Field(0.0, description="GPUs per trial / task / worker: 0, a fraction in (0, 1] or a whole number")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP) per run")
    max_concurrent: Optional[int] = Field(None, ge=1, description="runs at once; None: what the cluster fits")


class RuntimeEnvSection(StrictConfig):
    """What `submit` gives the Ray job (Ray's runtime_env): packages, variables, files."""

    pip: list[str] = Field(default_factory=list, description="pip requirements installed for the job")
    env_vars: dict[str, str] = Field(default_factory=dict, description="environment variables (strings only)")
    working_dir: Optional[str] = Field(None, description="folder uploaded to the cluster (default: the repository)")

    def to_ray(self) -> dict:
        """The runtime_env mapping Ray takes, without the empty entries."""
        env = {"pip": list(self.pip), "env_vars": dict(self.env_vars), "working_dir": self.working_dir}
        return {key: value for key, value in env.items() if value}


class PretrainSection(StrictConfig):
    """A Point-MAE pre-training whose weights the later stages start from.

    `pretrain: path.yaml` is short for `pretrain: {config: path.yaml}`."""

    config: Optional[str] = Field(None, description="a PretrainConfig YAML (found as described in jobs/paths.py)")
    settings: dict = Field(default_factory=dict, description="PretrainConfig fields, over the file's or the defaults")
    workers: Optional[int] = Field(None, ge=1)
    cpus: Optional[Cpus] = None
    gpus: Optional[Gpus] = None

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, data):
        return {"config": data} if isinstance(data, str) else data


class TuneSection(StrictConfig):
    """A Ray Tune + Optuna search (distributed.tune.SearchSettings) around the base config."""

    space: str = Field(description="a search space YAML (search_spaces/*.yaml)")
    samples: int = Field(8, ge=1, description="trials to run")
    epochs: Optional[int] = Field(None, ge=1, description="the most a trial trains (ASHA's max_t); None: base's")
    overrides: dict = Field(default_factory=dict,
                            description="TrainConfig fields over the base, for the search only (e.g. smaller data)")
    cpus_per_trial: Optional[Cpus] = None
    gpus_per_trial: Optional[Gpus] = None
    workers_per_trial: Optional[int] = Field(None, ge=1)
    max_concurrent: Optional[int] = Field(None, ge=1)
    asha: bool = True
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    multi_objective: bool = Field(False, description="maximise accuracy, minimise trainable parameters")
    max_failures: int = Field(1, ge=0, description="retries of a crashed trial")
    seed: Optional[int] = Field(None, description="TPE sampler seed; None: the job's seed")


class FinetuneSection(StrictConfig):
    """Fine-tune the chosen config on each task, with baselines beside it, in parallel."""

    config: Optional[Literal["best", "base"]] = Field(
        None, description="best: the search's best point; base: the base config; None: best when tuned")
    tasks: list[str] = Field(default_factory=list, description="task names; empty: the base's task")
    compare: list[Literal["published", "full", "linear"]] = Field(
        default_factory=list, description="baselines run beside it on every task")
    overrides: dict[Literal["published", "full", "linear"], dict] = Field(
        default_factory=dict, description="config fields merged into a baseline's, e.g. full: {optim: {lr: 1.0e-3}} "
        "(full fine-tuning moves every weight and wants a smaller lr than PEFT)")
    epochs: Optional[int] = Field(None, ge=1, description="None: the base's optim.epochs")
    workers: Optional[int] = Field(None, ge=1)
    cpus: Optional[Cpus] = None
    gpus: Optional[Gpus] = None
    max_concurrent: Optional[int] = Field(None, ge=1)
    max_failures: int = Field(2, ge=0, description="worker failures a run recovers from")

    @field_validator("tasks", "compare")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return values

    @model_validator(mode="after")
    def _overrides_of_compared(self):
        stray = sorted(set(self.overrides) - set(self.compare))
        if stray:
            raise ValueError(f"overrides: {', '.join(stray)} not in compare {self.compare}")
        return self


class TaskEntry(StrictConfig):
    """One task of a multi-task fine-tune: the base config with these changes."""

    name: Label = Field(description="unique label: the run's name and folder")
    task: str = Field(description="a task registry name (data.tasks)")
    root: Optional[str] = Field(None, description="data root; None: the base's")
    options: Optional[dict] = Field(None, description="task options; None: the base's (replaced, not merged)")
    mode: Optional[Mode] = None
    model: dict = Field(default_factory=dict, description="ModelSection fields over the base's (preset, checkpoint)")
    peft: dict = Field(default_factory=dict, description="PointPEFTConfig fields over the base's")
    optim: dict = Field(default_factory=dict, description="OptimSection fields over the base's")
    workers: Optional[int] = Field(None, ge=1)
    cpus: Optional[Cpus] = None
    gpus: Optional[Gpus] = None

    def applied_to(self, base: Mapping) -> dict:
        """`base` (TrainConfig fields) with this entry's changes: nested mappings merge key
        by key, except `options`, which replace the base's (they differ per task)."""
        data = {"task": self.task, **({"root": self.root} if self.root is not None else {})}
        changes = {"data": data, "model": self.model, "peft": self.peft, "optim": self.optim}
        if self.mode is not None:
            changes["mode"] = self.mode
        merged = deep_merge(base, changes)
        if self.options is not None:
            merged["data"]["options"] = dict(self.options)
        return merged
