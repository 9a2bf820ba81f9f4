"""Command line: parse, call one function, print. `pointpeft-ray --help`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import logs
from .configuration import check_name, name_from_path, parse_key_values
from .data.inspect import format_summary, render_samples_png, summarise
from .engine.summary import RunSummary, format_epoch
from .errors import PointPEFTError
from .file_names import PRETRAINED_FILE
from .folder_lock import exclusive_folder
from .jobs.commands import add_cluster_commands
from .output import write_json
from .results.search_report import build_report, format_report, report_payload
from .results.storage import is_uri
from .serving.commands import add_predict_command
from .serving.convert import add_convert_command

logger = logging.getLogger("pointpeft_ray.cli")  # not __name__: that is __main__ under `python -m`


def _add_bench_model(sub) -> None:
    p = sub.add_parser("model", help="train step time and peak memory: full fine-tune vs Point-PEFT")
    p.add_argument("--preset", default="point_mae", help="model size: point_mae (published), small, tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=None, help="points per cloud (default: the preset's)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--variants", default="full,peft,peft_frozen_pass")
    p.add_argument("--compile", action="store_true", help="torch.compile every variant's forward (as compile: true)")
    p.add_argument("--fps", default="auto", choices=["auto", "torch", "triton"],
                   help="farthest point sampling: the one-launch Triton kernel (auto: on CUDA with triton) "
                   "or the PyTorch loop")
    p.add_argument("--json", dest="json_path", default=None, help="also write the figures to this JSON file")
    p.add_argument("--profile", dest="profile_dir", default=None, help="write a torch.profiler table per variant here")
    p.set_defaults(func=_run_bench_model)


def _run_bench_model(args) -> int:
    import torch

    from .bench.model import VARIANTS, BenchSettings, run_bench
    from .models import fps_triton
    from .models.presets import get_preset

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise PointPEFTError(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    if args.fps == "triton" and not fps_triton.usable(torch.zeros(1, 1, 3, device=device)):
        raise PointPEFTError(f"--fps triton: the Triton kernel cannot run on device {device} here "
                             "(it needs triton and a CUDA device); use --fps torch or auto")
    get_preset(args.preset)  # fail fast on a bad name
    settings = BenchSettings(preset=args.preset, batch=args.batch, num_points=args.points, steps=args.steps,
                             warmup=args.warmup, device=device, bf16=args.bf16, compile=args.compile,
                             fps=args.fps, profile_dir=args.profile_dir)
    run_bench(settings, variants, args.json_path)
    return 0


def _add_bench_data(sub) -> None:
    p = sub.add_parser("data", help="loader samples/s: read + augment + collate")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(func=_run_bench_data)


def _run_bench_data(args) -> int:
    from .bench.data import run_bench

    run_bench(args.samples, args.batch, args.epochs, args.json_path)
    return 0


def _add_data_source_args(p) -> None:
    p.add_argument("task", help="task name, e.g. synth/hardest, scanobjectnn/pb_t50_rs, modelnet40")
    p.add_argument("--root", default=None, help="folder holding the downloaded dataset (real datasets)")
    p.add_argument("--cache-dir", default=None, help="Arrow cache folder (default: $POINTPEFT_CACHE or ~/.cache/pointpeft-ray)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read pickled files (.dat/.pkl) through a numpy-only unpickler; pickles can run code")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, e.g. samples_per_class=200, points=2048, seed=1 (synthetic tasks)")


def _load_splits(args) -> dict:
    """The task's splits, read or made into the cache, after their counts are printed."""
    from .data.tasks import get_task, load_task_split

    task = get_task(args.task).with_options(**parse_key_values(args.option, "--option"))
    splits = {split: load_task_split(task, split, args.root, args.cache_dir, args.allow_pickle)
              for split in task.splits}
    print(format_summary(args.task, summarise(splits)))
    return splits


def _run_data_prepare(args) -> int:
    for name, data in _load_splits(args).items():
        print(f"cached {name}: {data.source}")
    return 0


def _run_data_inspect(args) -> int:
    splits = _load_splits(args)
    png = args.png or f"{args.task.replace('/', '_')}-samples.png"
    render_samples_png(splits[args.split], png, per_class=args.per_class)
    print(f"picture of {args.per_class} {args.split} samples per class: {png}")
    return 0


def _add_data(sub) -> None:
    prepare = sub.add_parser("prepare", help="generate or convert a task's splits into the Arrow cache")
    _add_data_source_args(prepare)
    prepare.set_defaults(func=_run_data_prepare)
    inspect = sub.add_parser("inspect", help="counts per split and class, and a PNG of samples per class")
    _add_data_source_args(inspect)
    inspect.add_argument("--png", default=None, help="where to write the picture (default: TASK-samples.png)")
    inspect.add_argument("--split", default="train")
    inspect.add_argument("--per-class", type=int, default=3)
    inspect.set_defaults(func=_run_data_inspect)


def _add_ray_run_args(p) -> None:
    """What a Ray Train run (train, pretrain) is given on the command line."""
    p.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    p.add_argument("--gpu", action="store_true", help="GPU workers (with --in-process: device cuda)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0,
                   help="with --gpu: GPUs per worker; a fraction shares a GPU between runs")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs per worker (default: the cluster's CPUs shared out among the workers)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--name", default=None, help="run name; rerunning the same name resumes (default: config file stem)")
    p.add_argument("--storage", default=None,
                   help="storage path or pyarrow.fs URI (default: ./runs); runs are kept in STORAGE/NAME")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from")
    p.add_argument("--in-process", action="store_true", help="run the loop in this process, without Ray")
    p.add_argument("--json", dest="json_path", default=None, help="write the run's history and summary as JSON")


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="fine-tune (peft, full or linear) from a YAML config on Ray Train")
    p.add_argument("config", help="YAML file of a TrainConfig")
    _add_ray_run_args(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (config key compile: true)")
    p.set_defaults(func=_run_train)


def _run_name(args, default_from: str) -> str:
    """--name (checked: it becomes a folder), else the stem of the file `default_from`."""
    return check_name(args.name, "--name") if args.name is not None else name_from_path(default_from)


def _ray_run_settings(args, name: str):
    """The Ray Train run the flags of _add_ray_run_args describe."""
    from .distributed.train import RayRunSettings

    return RayRunSettings(workers=args.workers, use_gpu=args.gpu, gpus_per_worker=args.gpus_per_worker,
                          cpus_per_worker=args.cpus_per_worker, name=name, storage_path=args.storage,
                          max_failures=args.max_failures)


def _run_train(args) -> int:
    from .engine.config import TrainConfig

    name = _run_name(args, args.config)
    config = TrainConfig.from_yaml(args.config).check_paths()
    if args.epochs is not None:
        config = config.replace(optim=config.optim.replace(epochs=args.epochs).model_dump())
    if args.compile:
        config = config.replace(compile=True)
    settings = _ray_run_settings(args, name)
    try:
        if args.in_process:
            summary = _train_in_process(config, settings)
        else:
            summary = _train_on_ray(config, settings, args.address)
    except KeyboardInterrupt:
        print(f"pointpeft-ray: interrupted; rerun the same command to resume run {settings.name!r} "
              "from its last checkpoint", file=sys.stderr)
        return 130
    print(summary.format())
    if args.json_path:
        write_json(args.json_path, {"config": config.model_dump(), **summary.as_dict()})
    return 0


def _train_in_process(config, settings):
    from .engine.loop import train

    run_dir = config.run_dir or (str(settings.local_run_dir()) if settings.local_run_dir() else None)
    config = config.replace(run_dir=run_dir)
    with exclusive_folder(run_dir, f"run {settings.name!r}"):
        result = train(config, report=lambda metrics: logger.info(format_epoch(metrics)))
    return RunSummary.from_run_result(result, run_dir, config.tensorboard_dir())


def _train_on_ray(config, settings, address):
    from .distributed.train import best_checkpoint, fit, with_log_dir

    start = time.perf_counter()
    result = fit(config, settings, address)
    if result.error is not None:
        raise PointPEFTError(f"training failed: {result.error}")
    return RunSummary.from_ray_result(result, best_checkpoint(result), time.perf_counter() - start,
                                      with_log_dir(config, settings).log_dir)


def _add_pretrain(commands) -> None:
    p = commands.add_parser("pretrain", help="Point-MAE masked-autoencoder pre-training from a YAML config on Ray Train")
    p.add_argument("config", help="YAML file of a PretrainConfig")
    _add_ray_run_args(p)
    p.add_argument("--output", default=None,
                   help="where to write pretrain.pth (default: the config's output, else runs/NAME/pretrain.pth)")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from .pretrain.config import PretrainConfig

    name = _run_name(args, args.config)
    config = PretrainConfig.from_yaml(args.config)
    # A local folder per run name: in-process runs resume from it (as Ray runs do by name)
    # and the checkpoint lands in it by default; a storage URI keeps only Ray's state.
    local_storage = args.storage if args.storage and not is_uri(args.storage) else "runs"
    run_folder = Path(local_storage) / name
    changes = {}
    if args.epochs is not None:
        changes["optim"] = config.optim.replace(epochs=args.epochs).model_dump()
    if args.in_process and config.run_dir is None:
        changes["run_dir"] = str(run_folder)
    if args.output or config.output_path() is None:
        changes["output"] = args.output or str(run_folder / PRETRAINED_FILE)
    if args.gpu and args.in_process:
        changes["device"] = "cuda"
    config = config.replace(**changes) if changes else config
    if args.in_process:
        from .pretrain.loop import pretrain

        with exclusive_folder(config.run_dir, f"run {name!r}"):
            result = pretrain(config)
    else:
        from .distributed.pretrain import fit_pretrain

        result = fit_pretrain(config, _ray_run_settings(args, name), args.address)
    loss = "n/a (no epoch left to run)" if result.final_loss is None else f"{result.final_loss:.5f}"
    print(f"pre-training done: final chamfer-l2 {loss} after {result.epochs} epochs; "
          f"wall {result.wall_seconds:.1f}s; checkpoint: {result.checkpoint}")
    if args.json_path:
        write_json(args.json_path, {"config": config.model_dump(), "final_loss": result.final_loss,
                                    "epochs": result.epochs, "wall_seconds": result.wall_seconds,
                                    "checkpoint": str(result.checkpoint), "total_params": result.total_params,
                                    "history": result.history})
    return 0


def _add_run(commands) -> None:
    p = commands.add_parser("run", help="run a job file (jobs/*.yaml): pretrain, tune, finetune, multitask, report")
    p.add_argument("job", help="a job YAML (format: jobs/README.md)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", default=None, help="override the job's storage folder")
    p.add_argument("--json", dest="json_path", default=None, help="write the job's summary (stage times, results) as JSON")
    p.set_defaults(func=_run_job)


def _run_job(args) -> int:
    from .jobs.runner import run_job
    from .jobs.spec import JobSpec

    job = JobSpec.from_yaml(args.job)
    if args.storage:
        job = job.replace(storage=args.storage)
    try:
        outcome = run_job(job, args.address)
    except KeyboardInterrupt:
        print(f"pointpeft-ray: interrupted; rerun `pointpeft-ray run {args.job}` to resume", file=sys.stderr)
        return 130
    if outcome.report_text:
        print(outcome.report_text)
    if args.json_path:
        write_json(args.json_path, asdict(outcome))
    return 0


def _add_bench_train(sub) -> None:
    p = sub.add_parser("train", help="wall time of a fine-tune through Ray Train (1 worker) vs the loop in-process")
    p.add_argument("--epochs", type=int, default=8, help="long enough for a >= 60 s run on 2 CPU cores")
    p.add_argument("--repeats", type=int, default=2, help="pairs of runs, alternating; the ratio is of the means")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(func=_run_bench_train)


def _run_bench_train(args) -> int:
    from .bench.train import run_bench

    run_bench(args.epochs, args.json_path, args.address, args.repeats)
    return 0


def _add_tune(commands) -> None:
    p = commands.add_parser("tune", help="search PEFT hyper-parameters with Ray Tune + Optuna (TPE) + ASHA")
    p.add_argument("config", help="YAML file of the base TrainConfig (task, model, epochs...)")
    p.add_argument("--space", required=True, help="search space YAML (search_spaces/*.yaml)")
    p.add_argument("--samples", type=int, default=8, help="trials to run")
    p.add_argument("--epochs", type=int, default=None, help="override optim.epochs (the most a trial trains)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--name", default=None, help="experiment name (default: the space's file stem)")
    p.add_argument("--storage", default=None, help="storage path or pyarrow.fs URI (default: ./runs)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the same name")
    p.add_argument("--repair", action="store_true",
                   help="rebuild a damaged trials/epochs table from Ray Tune's trial folders (the damaged file is "
                   "kept beside it), then stop; add --resume to continue the search after the repair")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU between trials")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers (DDP) per trial")
    p.add_argument("--max-concurrent", type=int, default=None, help="default: what the cluster's resources allow")
    p.add_argument("--no-asha", action="store_true", help="run every trial to the end")
    p.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial")
    p.add_argument("--multi-objective", action="store_true", help="maximise accuracy, minimise trainable params")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--json", dest="json_path", default=None, help="write the outcome as JSON")
    p.set_defaults(func=_run_tune)


def _run_tune(args) -> int:
    from .distributed.tune import SearchSettings, run_search
    from .engine.config import TrainConfig
    from .search.space import SearchSpace

    name = _run_name(args, args.space)
    base = TrainConfig.from_yaml(args.config).check_paths()
    if args.epochs is not None:
        base = base.replace(optim=base.optim.replace(epochs=args.epochs).model_dump())
    space = SearchSpace.from_yaml(args.space)
    settings = SearchSettings(samples=args.samples, name=name, storage_path=args.storage,
                              cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                              workers_per_trial=args.workers_per_trial, max_concurrent=args.max_concurrent,
                              seed=args.seed, asha=not args.no_asha, grace_period=args.grace_period,
                              multi_objective=args.multi_objective)
    try:
        outcome = run_search(base, space, settings, args.address, resume=args.resume, repair=args.repair)
    except KeyboardInterrupt:
        print("pointpeft-ray: interrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.status_counts.items()))
    best = f"{outcome.best_accuracy:.2f} ({outcome.best_trial})" if outcome.best_trial else "none finished"
    print(f"trials: {outcome.trials} ({counts})\nbest accuracy: {best}\nresults: {outcome.experiment_dir} "
          f"(trials.parquet, epochs.parquet, best_config.yaml)\nreport: pointpeft-ray report {outcome.experiment_dir}")
    if args.json_path:
        write_json(args.json_path, asdict(outcome))
    return 0


def _add_report(commands) -> None:
    p = commands.add_parser("report", help="leaderboard, importances and plots of a search, from its result files")
    p.add_argument("experiment_dir", help="folder with trials.parquet / epochs.parquet / best_config.yaml "
                                          "(finished, running, or copied from a cluster)")
    p.add_argument("--top", type=int, default=10, help="trials in the leaderboard and the learning curves")
    p.add_argument("--plots", dest="plots_dir", default=None,
                   help="where to write the PNGs (default: EXPERIMENT_DIR/plots)")
    p.add_argument("--json", dest="json_path", default=None,
                   help="write the leaderboard, importances, status counts and plot paths as JSON")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:

    if args.top < 1:
        raise PointPEFTError(f"--top must be at least 1, got {args.top}")
    report = build_report(args.experiment_dir, top=args.top, plots_dir=args.plots_dir)
    print(format_report(report))
    if args.json_path:
        write_json(args.json_path, report_payload(report))
    return 0


def _add_bench_search(sub) -> None:
    p = sub.add_parser("search", help="Ray Tune + Optuna + ASHA vs plain Optuna vs random search: time to a target",
                       description="By default the quick start's search (its space, base config, pre-trained "
                                   "backbone, trials, epochs and grace period) three ways; --preset benchmarks "
                                   "a bare backbone size on search_spaces/cpu_demo.yaml instead.")
    # Resolved when the command runs: bench.search loads torch, and every command builds this parser.
    p.add_argument("--job", default=None,
                   help="benchmark this job file's tune stage (default: the repository's jobs/quickstart.yaml)")
    p.add_argument("--preset", default=None, help="instead of --job: this backbone size on the CPU demo space")
    p.add_argument("--trials", type=int, default=None, help="default: the job's samples (--preset: 8)")
    p.add_argument("--epochs", type=int, default=None, help="the most a trial trains (default: the job's; --preset: 4)")
    p.add_argument("--samples-per-class", type=int, default=16, help="--preset: synth/hardest training size")
    p.add_argument("--checkpoint", default=None, help="--preset: pre-trained backbone weights (pretrain.pth)")
    p.add_argument("--target", type=float, default=None,
                   help="target accuracy (default: the lowest of the methods' best, a level all reached)")
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(func=_run_bench_search)


def _run_bench_search(args) -> int:
    from .bench.search import DEFAULT_JOB, run_bench, setup_from_job, setup_from_preset

    if args.preset:
        setup = setup_from_preset(args.preset, args.trials or 8, args.epochs or 4, args.samples_per_class,
                                  args.checkpoint)
    else:
        setup = setup_from_job(args.job or DEFAULT_JOB, args.trials, args.epochs)
    run_bench(setup, args.target, args.json_path)
    return 0


def _add_bench_multitask(sub) -> None:
    p = sub.add_parser("multitask", help="two fine-tunes in parallel (1 CPU each) vs one after the other")
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples-per-class", type=int, default=16)
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(func=_run_bench_multitask)


def _run_bench_multitask(args) -> int:
    from .bench.multitask import run_bench

    run_bench(args.preset, args.epochs, args.samples_per_class, args.json_path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointpeft-ray", description=__doc__)
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="DEBUG",
                        help="Ray's own INFO messages, and full tracebacks of unexpected errors")
    levels.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="WARNING",
                        help="warnings and errors only (no progress lines)")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks (a table, and JSON with --json)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    _add_bench_model(bench_sub)
    _add_bench_data(bench_sub)
    _add_bench_train(bench_sub)
    _add_bench_search(bench_sub)
    _add_bench_multitask(bench_sub)
    _add_train(commands)
    _add_tune(commands)
    _add_report(commands)
    _add_pretrain(commands)
    add_cluster_commands(commands)
    add_predict_command(commands)
    add_convert_command(commands)
    _add_run(commands)
    data = commands.add_parser("data", help="prepare and inspect datasets")
    _add_data(data.add_subparsers(dest="data", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_level:
        os.environ[logs.LEVEL_ENV] = args.log_level  # Ray's processes inherit it (pointpeft_ray/logs.py)
    try:
        logs.configure()  # a level name it does not know is a ValueError, reported below
        return args.func(args)
    except (PointPEFTError, ValueError) as err:
        print(f"pointpeft-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pointpeft-ray: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line unless asked for the traceback
        if args.log_level == "DEBUG":
            raise
        where = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"pointpeft-ray: error: {type(err).__name__}: {where} (rerun with --verbose for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
