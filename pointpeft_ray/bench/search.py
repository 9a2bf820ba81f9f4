"""`pointpeft-ray bench search`: how fast a search reaches a good config.

The same trial code (the training loop on a search-space point), the same space and the
same budget (trials x epochs), three ways:
- `ray_tune`: Ray Tune + OptunaSearch (TPE) + ASHA, as many trials at once as the CPUs allow;
- `optuna`: plain in-process Optuna, TPE + successive halving with ASHA's rungs (same
  grace period, reduction factor 2), one trial at a time on every core;
- `random`: random search without early stopping, one trial at a time.
By default the setting is the quick start's search (jobs/quickstart.yaml: its space, base
config, pre-trained backbone, trials, epochs and grace period); `--preset` benchmarks a
bare backbone size on the CPU demo space instead.
For each: wall time, epochs trained, and the wall time / epochs until the best accuracy
so far first reached the target (by default the lowest of the three methods' best
accuracies, i.e. a level every method reached). Also the per-trial start-up cost
inside Ray Tune and the time trials spent on the memory bank.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..distributed.cluster import ensure_ray
from ..distributed.tune import SearchSettings, run_search
from ..engine.config import TrainConfig
from ..engine.loop import prepare_run, train
from ..errors import ConfigError
from ..jobs.spec import JobSpec
from ..logs import quiet
from ..output import format_table
from ..pretrain.cache import ensure_pretrained
from ..search.space import SearchSpace
from .common import cpu_config, machine_info, save_figures

REPOSITORY = Path(__file__).resolve().parents[2]
SPACE_FILE = REPOSITORY / "search_spaces" / "cpu_demo.yaml"
DEFAULT_JOB = REPOSITORY / "jobs" / "quickstart.yaml"
# ASHA's reduction factor in distributed.tune; the plain-Optuna pruner uses the same rungs.
REDUCTION_FACTOR = 2


@dataclass(frozen=True)
class BenchSetup:
    """What every method searches: the trials' base config (its epochs: the most a trial
    trains), the space, the number of trials and the epochs before early stopping."""

    base: TrainConfig
    space: SearchSpace
    trials: int
    grace_period: int
    label: str


@dataclass
class Timeline:
    """Every reported epoch of a method: (seconds since start, trial, accuracy so far)."""

    start: float = field(default_factory=time.time)
    events: list = field(default_factory=list)
    setup_seconds: list = field(default_factory=list)
    bank_seconds: list = field(default_factory=list)

    def record(self, trial_id: str, metrics: dict) -> None:
        self.events.append((time.time() - self.start, trial_id, float(metrics["best_accuracy"])))
        if int(metrics["epoch"]) == 1:
            self.setup_seconds.append(float(metrics.get("setup_seconds", 0.0)))
            self.bank_seconds.append(float(metrics.get("bank_seconds", 0.0)))

    def summary(self, wall: float, target: float) -> dict:
        best = max((acc for _, _, acc in self.events), default=0.0)
        reached = next(((i, t) for i, (t, _, acc) in enumerate(self.events) if acc >= target), None)
        return {"wall_seconds": wall, "epochs": len(self.events), "best_accuracy": best,
                "seconds_to_target": reached[1] if reached else None,
                "epochs_to_target": reached[0] + 1 if reached else None,
                "trials": len({trial for _, trial, _ in self.events})}


def setup_from_job(path: str | Path, trials: Optional[int] = None, epochs: Optional[int] = None) -> BenchSetup:
    """The search stage of a job file, on its pre-trained backbone (pre-trained first
    when the cache lacks it, as `pointpeft-ray run` would)."""
    job = JobSpec.from_yaml(path)
    if job.tune is None:
        raise ConfigError(f"{path}: the job has no tune stage to benchmark")
    if job.pretrain is not None:
        job = job.with_pretrained(ensure_pretrained(job.pretrain_config()))
    base = job.tune_config()
    if epochs is not None:
        base = base.replace(optim=base.optim.replace(epochs=epochs))
    return BenchSetup(base, job.search_space(), trials or job.tune.samples,
                      min(job.tune.grace_period, base.optim.epochs), f"the search of {path}")


def setup_from_preset(preset: str, trials: int, epochs: int, samples_per_class: int,
                      checkpoint: Optional[str] = None, grace_period: int = 1) -> BenchSetup:
    """The CPU demo space on a bare backbone size (random init unless `checkpoint`)."""
    raw = yaml.safe_load(SPACE_FILE.read_text())
    raw.setdefault("base", {}).setdefault("model", {})["preset"] = preset
    space = SearchSpace.from_dict(raw, source=f"{SPACE_FILE.name} (preset {preset})")
    base = cpu_config("synth/hardest", preset, epochs, samples_per_class, checkpoint=checkpoint)
    return BenchSetup(base, space, trials, min(grace_period, epochs),
                      f"{SPACE_FILE.name} on preset {preset}, synth/hardest ({samples_per_class}/class)")


def run_ray_tune(setup: BenchSetup, storage: str) -> tuple[Timeline, float]:
    from ray.tune import Callback

    timeline = Timeline()

    class _Record(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            timeline.record(trial.trial_id, result)

    settings = SearchSettings(samples=setup.trials, name="bench", storage_path=storage, cpus_per_trial=1,
                              grace_period=setup.grace_period, seed=setup.base.seed, max_failures=0)
    start = time.perf_counter()
    run_search(setup.base, setup.space, settings, callbacks=(_Record(),))
    return timeline, time.perf_counter() - start


def run_optuna(setup: BenchSetup, pruned: bool) -> tuple[Timeline, float]:
    """Plain Optuna in this process: TPE + successive halving on ASHA's rungs, or random
    without pruning."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = setup.base.seed
    sampler = optuna.samplers.TPESampler(seed=seed) if pruned else optuna.samplers.RandomSampler(seed=seed)
    pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=setup.grace_period,
                                                     reduction_factor=REDUCTION_FACTOR)
              if pruned else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    space, base = setup.space, setup.base
    default = space.default_point(base)
    if default:
        study.enqueue_trial(default)
    timeline = Timeline()

    def objective(trial) -> float:
        config = space.apply(base, space.suggest(trial))

        def report(metrics: dict) -> None:
            timeline.record(str(trial.number), metrics)
            trial.report(metrics["best_accuracy"], metrics["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()
        return train(config, report=report).best_accuracy

    start = time.perf_counter()
    study.optimize(objective, n_trials=setup.trials, catch=(ConfigError,))
    return timeline, time.perf_counter() - start


def run_bench(setup: BenchSetup, target: Optional[float] = None, json_path: Optional[str] = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="pointpeft-bench-search-") as tmp, quiet():
        ensure_ray(None)
        start = time.perf_counter()
        prepare_run(setup.space.base_config(setup.base))  # data + bank, paid once
        shared = time.perf_counter() - start
        runs = {"ray_tune": run_ray_tune(setup, str(Path(tmp) / "ray"))}
        runs["optuna"] = run_optuna(setup, pruned=True)
        runs["random"] = run_optuna(setup, pruned=False)
    if target is None:  # a level every method reached
        target = min(max((acc for _, _, acc in timeline.events), default=0.0) for timeline, _ in runs.values())
    methods = {name: timeline.summary(wall, target) for name, (timeline, wall) in runs.items()}
    tune_timeline = runs["ray_tune"][0]
    base = setup.base
    payload = {
        "benchmark": "search", "machine": machine_info("cpu"), "setting": setup.label,
        "trials": setup.trials, "epochs": base.optim.epochs, "grace_period": setup.grace_period,
        "preset": base.model.preset, "checkpoint": base.model.checkpoint, "task": base.data.task,
        "data_options": dict(base.data.options), "target": target,
        "shared_state_seconds": shared, "methods": methods,
        "ray_trial_setup_seconds": tune_timeline.setup_seconds,
        "ray_trial_bank_seconds": tune_timeline.bank_seconds,
        "ratio_wall_ray_vs_optuna": methods["ray_tune"]["wall_seconds"] / methods["optuna"]["wall_seconds"],
    }
    _print(payload)
    return save_figures(payload, json_path)


def _print(payload: dict) -> None:
    methods = payload["methods"]
    print(f"search bench: {payload['setting']}: {payload['trials']} trials x at most {payload['epochs']} epochs "
          f"(early stopping from epoch {payload['grace_period']}), preset {payload['preset']}, {payload['task']}, "
          f"{os.cpu_count()} CPUs; target accuracy {payload['target']:.2f}")
    print(format_table(["method", "wall s", "epochs", "best acc", "s to target", "epochs to target"], [
        (name, m["wall_seconds"], m["epochs"], m["best_accuracy"], m["seconds_to_target"] or "-",
         m["epochs_to_target"] or "-") for name, m in methods.items()]))
    setup = payload["ray_trial_setup_seconds"]
    print(f"Ray Tune vs plain Optuna wall: {payload['ratio_wall_ray_vs_optuna']:.2f}x (goal <= 0.8); "
          f"per-trial start-up in Tune: mean {sum(setup) / max(1, len(setup)):.2f} s, max {max(setup, default=0):.2f} s "
          f"(goal <= 2 s); memory bank per trial: max {max(payload['ray_trial_bank_seconds'], default=0):.2f} s "
          f"(shared state prepared once: {payload['shared_state_seconds']:.1f} s)")
