"""Hyper-parameter search: Ray Tune + Optuna (TPE) + ASHA over a SearchSpace.

Each trial is the same training loop as everywhere else. With one worker per trial it
runs in the trial's own process (no second layer of actors); with several, the trial
launches a TorchTrainer and forwards its metrics to Tune.

Shared state is prepared once, on the driver, before the first trial: the dataset
caches and the memory bank (its features depend only on the frozen backbone and the
data, so every trial of a search shares one; trials read it from the on-disk cache,
whose file lock makes concurrent readers wait for one builder). Results go to the
experiment directory as Arrow tables while trials finish (see distributed.recorder).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ..engine.config import TrainConfig
from ..engine.context import TuneTrialContext
from ..engine.loop import prepare_run, train
from ..errors import ConfigError
from ..folder_lock import exclusive_folder
from ..logs import quiet
from ..results.storage import join
from ..search.space import SearchSpace
from .cluster import ensure_ray, verbose
from .train import NamedStorage, _worker_loop, launch, worker_logging
from .weights import share_checkpoints, shared_tensors

if TYPE_CHECKING:  # the recorder and the progress line load ray.tune: imported where a search runs
    from .recorder import SearchOutcome

logger = logging.getLogger(__name__)


@dataclass
class SearchSettings(NamedStorage):
    samples: int = 8
    name: str = "pointpeft-search"
    storage_path: Optional[str] = None  # local folder or pyarrow.fs URI; default ./runs
    cpus_per_trial: float = 1.0  # per worker when a trial has several
    gpus_per_trial: float = 0.0  # per worker; fractions let several small PEFT trials share a GPU
    workers_per_trial: int = 1
    max_concurrent: Optional[int] = None  # default: what the cluster's resources allow
    seed: int = 0
    asha: bool = True
    grace_period: int = 1
    multi_objective: bool = False  # maximise accuracy and minimise trainable parameters
    max_failures: int = 1  # retries of a crashed trial, from its last checkpoint

    KIND = "search"
    COUNTS = (("samples", "--samples"), ("workers_per_trial", "--workers-per-trial"))

    def experiment_dir(self) -> str:
        return join(self.storage(), self.name)


def run_search(base: TrainConfig, space: SearchSpace, settings: SearchSettings, address: str | None = None,
               resume: bool = False, callbacks: tuple = (), repair: bool = False) -> SearchOutcome:
    """Search `space` around `base`; returns where the results are and the best trial.
    `callbacks`: more ray.tune.Callback objects (e.g. a benchmark's timeline).
    `repair`: first rebuild damaged tables (distributed.recorder); without `resume`, stop there.
    A name that already holds a search is refused unless `resume` (or `repair`) says what to do,
    and so is a search another process is writing (folder_lock)."""
    with exclusive_folder(settings.local_run_dir(), f"search {settings.name!r}"):
        return _search(base, space, settings, address, resume, callbacks, repair)


def _search(base: TrainConfig, space: SearchSpace, settings: SearchSettings, address: str | None, resume: bool,
            callbacks: tuple, repair: bool) -> SearchOutcome:
    import ray.tune

    from .recorder import SearchRecorder

    recorder = SearchRecorder(settings.experiment_dir(), space, base.replace(eval_every=1, run_dir=None))
    if repair:
        done = recorder.repair()
        moved = ", ".join(f"{name} -> {aside}" for name, aside in done["moved_aside"].items()) or "none"
        logger.info(f"[repair] {done['trials']} trials and {done['epochs']} epochs recorded in "
                    f"{settings.experiment_dir()} (from {done['trial_folders']} trial folders; "
                    f"damaged files kept: {moved})")
        if not resume:
            return recorder.outcome()
    elif not resume and (recorder.has_record() or ray.tune.Tuner.can_restore(settings.experiment_dir())):
        raise ConfigError(f"{settings.experiment_dir()} already holds a search named {settings.name!r}: continue "
                          "it with --resume, or choose another --name (nothing was changed)")
    recorder.load_written()  # a damaged table stops here, before anything is written
    ensure_ray(address)
    # Keeping one checkpoint per trial makes Tune save the experiment's state at each one,
    # and warn about it every time; a few KB a save is no bottleneck here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose():
        # Tune's newer console output prints its configuration box and result paths whatever
        # `verbose` says; the classic reporter honours verbose=0. Our progress line says enough.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    base = base.replace(eval_every=1, run_dir=None)  # every epoch reports accuracy: ASHA compares rungs
    prepare_run(space.base_config(base))  # data and bank once, not by the first trials
    # The pre-trained weights: read here once, then from each node's object store (trials
    # on nodes without the driver's files find them there).
    weights = share_checkpoints([base]).get(base.model.checkpoint)
    from .search_progress import SearchProgress

    progress = SearchProgress(settings.samples, base.optim.epochs)
    tuner = _restored_tuner(base, space, settings, weights) if resume else \
        _new_tuner(base, space, settings, [recorder, progress, *callbacks], weights)
    tuner.fit()
    # A restored Tuner runs the callbacks it pickled at the start, not `recorder`: read
    # back what they wrote, so both paths finish from the tables on disk.
    recorder.load_written()
    recorder.finish()
    return recorder.outcome()


def _trainable(base: TrainConfig, space: SearchSpace, settings: SearchSettings, weights=None):
    import ray.tune

    worker_resources = {"CPU": settings.cpus_per_trial, "GPU": settings.gpus_per_trial}
    # The ref in a list: trials get the ref itself and read its arrays without a copy.
    trainable = ray.tune.with_parameters(_run_trial, base_config=base.model_dump(), space_raw=space.to_dict(),
                                         workers=settings.workers_per_trial, worker_resources=worker_resources,
                                         weights=[weights])
    if settings.workers_per_trial == 1:
        return ray.tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    # The trial only drives a TorchTrainer: a sliver of a CPU; its workers ask for their own.
    return ray.tune.with_resources(trainable, ray.tune.PlacementGroupFactory([{"CPU": 0.01}], strategy="PACK"))


def _new_tuner(base: TrainConfig, space: SearchSpace, settings: SearchSettings, callbacks: list, weights=None):
    import ray.tune

    return ray.tune.Tuner(
        _trainable(base, space, settings, weights),
        tune_config=ray.tune.TuneConfig(search_alg=_searcher(base, space, settings),
                                        scheduler=_scheduler(base, settings),
                                        num_samples=settings.samples, reuse_actors=True),
        run_config=ray.tune.RunConfig(
            name=settings.name, storage_path=settings.storage(), callbacks=callbacks,
            failure_config=ray.tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


def _restored_tuner(base: TrainConfig, space: SearchSpace, settings: SearchSettings, weights=None):
    import ray.tune

    path = settings.experiment_dir()
    if not ray.tune.Tuner.can_restore(path):
        raise ConfigError(f"--resume: no search to resume at {path} (run it once without --resume)")
    # Unfinished trials continue from their checkpoints, and so do errored ones: a killed
    # driver's trials can be marked errored as their processes die with it. A trial that
    # failed on its own fails again and is recorded so; finished trials are kept as they are.
    return ray.tune.Tuner.restore(path, trainable=_trainable(base, space, settings, weights), resume_unfinished=True,
                                  resume_errored=True, restart_errored=False)


def _searcher(base: TrainConfig, space: SearchSpace, settings: SearchSettings):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from .recorder import METRIC

    if not verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory ..."

    default = space.default_point(base)
    metric, mode = ([METRIC, "trainable_params"], ["max", "min"]) if settings.multi_objective else (METRIC, "max")
    searcher = OptunaSearch(space=space.suggest, metric=metric, mode=mode,
                            points_to_evaluate=[default] if default else None,
                            sampler=optuna.samplers.TPESampler(seed=settings.seed))
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent(settings))


def _scheduler(base: TrainConfig, settings: SearchSettings):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from .recorder import METRIC

    if not settings.asha:
        return FIFOScheduler()
    epochs = base.optim.epochs
    return ASHAScheduler(time_attr="epoch", metric=METRIC, mode="max", max_t=epochs,
                         grace_period=min(settings.grace_period, epochs), reduction_factor=2)


def max_concurrent(settings: SearchSettings) -> int:
    """How many trials fit on the cluster at once (at least one)."""
    if settings.max_concurrent:
        return settings.max_concurrent
    import ray

    resources = ray.cluster_resources()
    cpus_per_trial = settings.cpus_per_trial * settings.workers_per_trial
    fits = [int(resources.get("CPU", 1) // max(cpus_per_trial, 1e-9))]
    if settings.gpus_per_trial > 0:
        fits.append(int(resources.get("GPU", 0) // (settings.gpus_per_trial * settings.workers_per_trial)))
    return max(1, min(fits))


def _run_trial(params: dict, base_config: dict, space_raw: dict, workers: int, worker_resources: dict,
               weights: list = (None,)) -> None:
    """One trial: the space's point applied to the base config, trained and reported."""
    raw = {key: value for key, value in space_raw.items() if value is not None}  # to_dict() -> from_dict()
    space = SearchSpace.from_dict(raw, source=raw.pop("source", "<search space>"))
    base = TrainConfig.from_dict(base_config)
    config = space.apply(base, params)
    # The shared weights are base's checkpoint; a point that names another reads its file.
    weights_ref = weights[0] if config.model.checkpoint == base.model.checkpoint else None
    if workers > 1:
        _train_with_workers(config, workers, worker_resources, weights_ref)
        return
    worker_logging()
    with quiet():  # one trial among many: the search's progress line speaks for it
        train(config, context=TuneTrialContext(), pretrained=shared_tensors(weights_ref))


def _train_with_workers(config: TrainConfig, workers: int, worker_resources: dict, weights_ref=None) -> None:
    """A TorchTrainer driven from the trial; TuneReportCallback forwards rank 0's reports.
    The workers read the memory bank from the cache the search's driver warmed."""
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    context = ray.tune.get_context()
    resources = {k: v for k, v in worker_resources.items() if v}
    scaling = ray.train.ScalingConfig(num_workers=workers, use_gpu=bool(resources.get("GPU")),
                                      resources_per_worker=resources)
    result = launch(_worker_loop, {"config": config.model_dump(), "bank": None, "weights": weights_ref}, scaling,
                    f"{context.get_trial_id()}-train", context.get_trial_dir(), callbacks=(TuneReportCallback(),))
    if result.error is not None:
        raise result.error
