"""`pointpeft-ray run JOB.yaml`: a job's stages, in order, on the Ray cluster it connects to.

Everything lands in JOB_DIR = STORAGE/NAME:
  job.yaml                the resolved job (what ran)
  job_summary.json        stage wall times and where each stage's results are
  pretrain/               the Ray run of the pre-training (weights: the pre-training cache)
  tune/                   trials.parquet, epochs.parquet, best_config.yaml (the search)
  finetune/, multitask/   tasks.parquet, epochs.parquet and one run folder per fine-tune
  adapters/               the adapter bank: every PEFT run's adapter (`pointpeft-ray predict`)
  report/                 report.txt and its plots

Rerunning the same job resumes: cached pre-training, a restored search, runs that
continue from their last checkpoint (finished ones return at once).

With a pyarrow.fs URI as storage (s3://, gs://, ...), the search writes there directly
(Ray Tune syncs it), and the rest is kept in a local folder on the driver
(<cache>/jobs/NAME-KEY) and copied up: each fine-tune run uploads its folder when it ends,
from whichever node ran it (and a rerun on any node starts from it), the driver uploads
each fine-tune stage's tables when the stage ends and the summary, bank and report at the
end. A rerun first downloads what the URI holds, so it resumes on another machine too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Optional

import yaml

from ..atomic import atomic_write_text
from ..data.cache import default_cache_dir
from ..distributed.cluster import ensure_ray
from ..distributed.multitask import TaskRun, run_tasks
from ..distributed.pretrain import fit_pretrain
from ..distributed.train import RayRunSettings
from ..distributed.tune import run_search
from ..errors import PointPEFTError, ResultsError
from ..file_names import EPOCHS_FILE, JOB_BANK_DIR, JOB_FILE, JOB_SUMMARY_FILE, REPORT_DIR, TASKS_FILE, TRIALS_FILE
from ..folder_lock import exclusive_folder
from ..pretrain.cache import ensure_pretrained, weights_key
from ..results.best_config import best_trial
from ..results.search_report import EXPECTED_FILES as SEARCH_FILES
from ..results.storage import download_file, download_folder, exists_at, is_uri, join, upload
from ..results.tables import read_trials
from ..serving.adapter_bank import entries_from_task_rows, write_adapter_bank
from .job_report import JobOutcome, write_job_report
from .spec import STAGES, JobSpec, PlannedRun

logger = logging.getLogger(__name__)


def run_job(job: JobSpec, address: str | None = None) -> JobOutcome:
    """Run every stage of `job`; returns where the results are and what they say.
    job_summary.json says `running` until the job ends, then `completed` or `failed`
    (with the error), so files left from an earlier run never pass for this one's."""
    job_dir, remote = job_folders(job)
    with exclusive_folder(job_dir, f"job {job.name!r}"):
        return _run_job(job, job_dir, remote, address)


def _run_job(job: JobSpec, job_dir: Path, remote: Optional[str], address: str | None) -> JobOutcome:
    start = time.perf_counter()
    ensure_ray(address)
    if remote and exists_at(remote):
        logger.info(f"[job] resuming from {remote}")
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / JOB_FILE, yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))
    outcome = JobOutcome(job_dir=str(job_dir))
    _publish_summary(outcome, job, job_dir, remote, "running")
    logger.info(f"[job] {job.name}: stages {', '.join(job.stage_names())}; results in {remote or job_dir}"
                + (f" (working copy {job_dir})" if remote else ""))
    try:
        _run_stages(job, outcome, job_dir, remote, address)
    except BaseException as err:
        outcome.wall_seconds = time.perf_counter() - start
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        _publish_summary(outcome, job, job_dir, remote, status, f"{type(err).__name__}: {err}")
        raise
    outcome.wall_seconds = time.perf_counter() - start
    _publish_summary(outcome, job, job_dir, remote, "completed")
    if remote:
        outcome.job_dir = remote
    logger.info(f"[job] {job.name} done in {outcome.wall_seconds:.0f} s ("
                + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in outcome.stage_seconds.items())
                + f"); results in {outcome.job_dir}")
    return outcome


def _run_stages(job: JobSpec, outcome: JobOutcome, job_dir: Path, remote: Optional[str], address: str | None) -> None:
    if job.pretrain is not None:
        outcome.pretrained = str(_timed(outcome, "pretrain", _pretrain, job, job_dir, remote, address))
        job = job.with_pretrained(outcome.pretrained)
    if job.tune is not None:
        outcome.best_trial = _timed(outcome, "tune", _tune, job, job_dir, address)
        if remote:  # the report reads the search's tables and best config, not its checkpoints
            for name in SEARCH_FILES:
                download_file(f"{remote}/tune/{name}", job_dir / "tune" / name)
    if job.finetune is not None:
        runs = job.finetune_runs(outcome.best_trial)
        outcome.task_rows["finetune"] = _timed(outcome, "finetune", _fine_tune, job, runs, "finetune",
                                               job_dir, remote, address)
    if job.multitask:
        outcome.task_rows["multitask"] = _timed(outcome, "multitask", _fine_tune, job, job.multitask_runs(),
                                                "multitask", job_dir, remote, address)
    outcome.adapter_bank = _write_adapter_bank(outcome, job_dir)
    if job.report:  # the command line prints it: the job's result, not its progress
        outcome.report_text = _timed(outcome, "report", write_job_report, job, outcome, job_dir / REPORT_DIR)


def _publish_summary(outcome: JobOutcome, job: JobSpec, job_dir: Path, remote: Optional[str], status: str,
                     error: Optional[str] = None) -> None:
    """job_summary.json, then (results on a URI) the driver's files uploaded."""
    summary = {"job": job.name, "status": status, "error": error, "stages": job.stage_names(),
               "wall_seconds": outcome.wall_seconds,
               "stage_seconds": outcome.stage_seconds, "pretrained": outcome.pretrained,
               "best_trial": _plain(outcome.best_trial), "adapter_bank": outcome.adapter_bank,
               "results": {stage: str(job_dir / stage) for stage in STAGES if (job_dir / stage).exists()}}
    atomic_write_text(job_dir / JOB_SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
    if remote:
        _upload_job(job_dir, remote)


def job_folders(job: JobSpec) -> tuple[Path, Optional[str]]:
    """(the folder the job works in, the storage URI its results go to, or None)."""
    storage = job.job_storage()
    if not is_uri(storage):
        return Path(storage), None
    remote = storage.rstrip("/")
    # One working copy per URI: two storages of one job name never share (or reuse) files.
    key = hashlib.blake2b(remote.encode(), digest_size=6).hexdigest()
    return default_cache_dir() / "jobs" / f"{job.name}-{key}", remote


def _upload_job(job_dir: Path, remote: str) -> None:
    """The driver's own files: summary, adapter bank, report. The stages' folders are
    there already (Ray Tune, Ray Train and each run write or upload their own; the
    fine-tune stages' tables went up with them), and this copy of them may be older."""
    for item in job_dir.iterdir():
        if item.name not in STAGES:
            upload(item, f"{remote}/{item.name}")


def _timed(outcome: JobOutcome, stage: str, function, *args):
    logger.info(f"[job] stage {stage} ...")
    start = time.perf_counter()
    value = function(*args)
    outcome.stage_seconds[stage] = time.perf_counter() - start
    logger.info(f"[job] stage {stage} done in {outcome.stage_seconds[stage]:.1f} s")
    return value


# --- stages ---

def _pretrain(job: JobSpec, job_dir: Path, remote: Optional[str], address: str | None) -> Path:
    resources = job.pretrain_resources()
    config = job.pretrain_config()
    # One worker takes a whole node's CPUs (RayRunSettings.resolved). The run is named by the
    # weights' key: Ray Train resumes a run of the same name, which must be these settings'.
    settings = RayRunSettings(workers=resources.workers, use_gpu=resources.gpus > 0,
                              gpus_per_worker=resources.gpus or 1.0,
                              cpus_per_worker=resources.cpus if resources.workers > 1 else None,
                              name=f"pretrain-{weights_key(config)}",
                              storage_path=remote or str(job_dir), max_failures=2)
    return ensure_pretrained(config, runner=partial(fit_pretrain, settings=settings, address=address))


def _tune(job: JobSpec, job_dir: Path, address: str | None) -> dict:
    """The search (resumed when this job ran it before); returns its best trial's row."""
    from ray.tune import Tuner

    settings = job.search_settings("tune")
    resume = Tuner.can_restore(settings.experiment_dir())
    if resume:
        logger.info(f"[tune] resuming the search in {settings.experiment_dir()}")
    elif exists_at(join(settings.experiment_dir(), TRIALS_FILE)):
        # A rerun resumes by itself; tables without Tune's state cannot be continued.
        raise PointPEFTError(f"tune: {settings.experiment_dir()} holds a search's tables but no Ray Tune state to "
                             "resume it from (cut short before Tune saved it, or copied without it); move that "
                             "folder aside to search again (nothing was changed)")
    outcome = run_search(job.tune_config(), job.search_space(), settings, address, resume=resume)
    trials = read_trials(join(outcome.experiment_dir, TRIALS_FILE)).to_pylist()  # may be a URI
    try:
        best = best_trial(trials)
    except ResultsError:
        errors = [row["error"] for row in trials if row.get("error")]
        raise PointPEFTError(f"tune: no trial finished ({len(trials)} ran"
                             + (f"; first error: {errors[0]}" if errors else "")
                             + f"); see {outcome.experiment_dir}/{TRIALS_FILE}") from None
    logger.info(f"[tune] best trial {best['trial_id']}: accuracy {best['best_accuracy']:.2f}")
    return best


def _fine_tune(job: JobSpec, planned: list[PlannedRun], stage: str, job_dir: Path, remote: Optional[str],
               address: str | None) -> list[dict]:
    runs = [TaskRun(run.label, run.config, cpus=run.resources.cpus, gpus=run.resources.gpus,
                    workers=run.resources.workers, variant=run.variant) for run in planned]
    logger.info(f"[{stage}] {len(runs)} run(s): {', '.join(run.label for run in runs)}")
    folder = job_dir / stage
    stage_uri = f"{remote}/{stage}" if remote else None
    rows = run_tasks(runs, folder, address, max_concurrent=job.max_concurrent(stage), sync_uri=stage_uri)
    if stage_uri:
        # The runs uploaded their own folders (from whichever node); the tables go beside
        # them, and the runs' folders come down here for the adapter bank.
        for table in (TASKS_FILE, EPOCHS_FILE):
            upload(folder / table, f"{stage_uri}/{table}")
        download_folder(stage_uri, folder)
    failed = [row for row in rows if row["status"] != "completed"]
    if len(failed) == len(rows):
        raise PointPEFTError(f"{stage}: every run failed; first error: {failed[0]['error']}")
    return rows


def _write_adapter_bank(outcome: JobOutcome, job_dir: Path) -> Optional[str]:
    """Every completed PEFT run's adapter, in one bank for `pointpeft-ray predict`."""
    entries = entries_from_task_rows(row for rows in outcome.task_rows.values() for row in rows)
    if not entries:
        return None
    path = job_dir / JOB_BANK_DIR
    write_adapter_bank(path, entries)
    logger.info(f"[job] adapter bank: {len(entries)} adapter(s) in {path}")
    return str(path)


def _plain(row: Optional[dict]) -> Optional[dict]:
    if row is None:
        return None
    return {key: value for key, value in row.items() if not (isinstance(value, float) and value != value)}
