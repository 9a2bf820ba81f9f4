"""The record of a search, kept by a Ray Tune callback on the driver.

Every reported epoch becomes a row of `epochs.parquet`, every trial a row of
`trials.parquet`; both are rewritten atomically when a trial finishes or fails (and at
most every few seconds while results arrive), so a reader sees a consistent table of a
running search. On `--resume` the callback starts from the tables already written, and
rows are keyed by (trial, epoch), so nothing is counted twice. A killed driver may not have
written its last few seconds of reports; a trial resumed from its checkpoint reports the
epochs that checkpoint holds (engine.epochs.RESTORED_EPOCHS_KEY), which fills them in.

A table that exists but cannot be read stops the search before anything is written
(DamagedRecordError), so a damaged record is never replaced by an empty one. `repair`
rebuilds it from what still reads and from Ray Tune's own per-trial record (each trial
folder's params.json, result.json and error.txt), keeping the damaged file beside it.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pyarrow as pa

from ray.tune import Callback

from ..engine.config import TrainConfig
from ..engine.epochs import RESTORED_EPOCHS_KEY
from ..errors import DamagedRecordError, ResultsError
from ..file_names import BEST_CONFIG_FILE, EPOCHS_FILE, TRIALS_FILE
from ..results.best_config import best_trial, write_best_config
from ..results.storage import exists_at, is_uri, join, write_table_atomic
from ..results.tables import (EPOCH_COLUMNS, PARAM_PREFIX, epochs_table, final_and_best, read_epochs, read_trials,
                              trials_table)
from ..search.space import SearchSpace

METRIC = "best_accuracy"  # present in every report, monotone: what ASHA and Optuna compare
WRITE_EVERY_S = 5.0
_EPOCH_KEYS = [name for name, _ in EPOCH_COLUMNS]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")


@dataclass
class SearchOutcome:
    experiment_dir: str
    trials: int
    best_trial: Optional[str]
    best_accuracy: Optional[float]
    status_counts: dict = field(default_factory=dict)


class SearchRecorder(Callback):
    def __init__(self, experiment_dir: str, space: SearchSpace, base: TrainConfig):
        self.experiment_dir = experiment_dir
        self.space = space
        self.base = base
        self.trials: dict[str, dict] = {}
        self.epochs: dict[tuple[str, int], dict] = {}
        self._last_write = 0.0

    # --- Tune's hooks ---

    def setup(self, **info) -> None:
        self.load_written()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._record(trial)["status"] = "running"

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        record = self._record(trial)
        record["status"] = "running"
        record["node"] = result.get("node_id") or result.get("node_ip") or record.get("node")
        if "trainable_params" in result:
            record["trainable_params"] = int(result["trainable_params"])
        record["wall_seconds"] = float(result.get("time_total_s") or 0.0)
        for earlier in json.loads(result.get(RESTORED_EPOCHS_KEY) or "[]"):
            # a trial resumed from its checkpoint: epochs reported before the driver was killed,
            # which the tables written then may lack
            self.epochs.setdefault((trial.trial_id, int(earlier["epoch"])), self._epoch_row(trial.trial_id, earlier))
        self.epochs[(trial.trial_id, int(result["epoch"]))] = self._epoch_row(trial.trial_id, result)
        if time.time() - self._last_write > WRITE_EVERY_S:
            self.write()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        record = self._record(trial)
        last_epoch, finished = self._last_epoch(trial.trial_id, record["params"])
        if finished:
            record["status"], record["stop_reason"] = "completed", f"finished {last_epoch} epochs"
        else:
            record["status"], record["stop_reason"] = "stopped", f"early stopping (ASHA) after epoch {last_epoch}"
        self.write()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        record = self._record(trial)
        record["status"], record["stop_reason"] = "failed", "error"
        record["error"] = _error_text(trial)
        self.write()

    def on_experiment_end(self, trials, **info) -> None:
        self.write()

    # --- the record ---

    @staticmethod
    def _epoch_row(trial_id: str, metrics: dict) -> dict:
        return {"trial_id": trial_id, **{key: metrics.get(key) for key in _EPOCH_KEYS if key != "trial_id"}}

    def _record(self, trial) -> dict:
        params = {k: v for k, v in trial.config.items() if k in set(self.space.parameter_names())}
        return self.trials.setdefault(trial.trial_id, {"trial_id": trial.trial_id, "status": "pending",
                                                       "params": params})

    def _last_epoch(self, trial_id: str, params: dict) -> tuple[int, bool]:
        """The trial's last recorded epoch, and whether that is all the epochs it planned."""
        last = max((epoch for (tid, epoch) in self.epochs if tid == trial_id), default=0)
        return last, last >= params.get("optim.epochs", self.base.optim.epochs)  # the space may search it

    def _trial_records(self) -> list[dict]:
        records = []
        for trial_id, record in self.trials.items():
            rows = sorted((row for (tid, _), row in self.epochs.items() if tid == trial_id), key=lambda r: r["epoch"])
            final, best = final_and_best(rows)
            records.append({**record, "final": final, "best": best, "epochs": len(rows)})
        return records

    def write(self) -> None:
        self._last_write = time.time()
        write_table_atomic(trials_table(self._trial_records(), self.space), self._path(TRIALS_FILE))
        rows = sorted(self.epochs.values(), key=lambda r: (r["trial_id"], r["epoch"]))
        write_table_atomic(epochs_table(rows), self._path(EPOCHS_FILE))

    def finish(self) -> None:
        """After Tuner.fit: the final tables and best_config.yaml (best trial, retrainable)."""
        self.write()
        records = [r for r in self._trial_records() if r["status"] in ("completed", "stopped")]
        if not records:
            return
        table = trials_table(records, self.space)
        configs = {r["trial_id"]: self.config_of(r["params"]) for r in records}
        write_best_config(table, configs, self._path(BEST_CONFIG_FILE))

    def config_of(self, params: dict) -> TrainConfig:
        """A trial's full config, as `pointpeft-ray train` takes it (no per-trial paths)."""
        config = self.space.apply(self.base, params)
        return config.replace(run_dir=None, log_dir=None)

    def outcome(self) -> SearchOutcome:
        records = self._trial_records()
        counts = dict(Counter(record["status"] for record in records))
        table = trials_table(records, self.space)
        try:
            best = best_trial(table)  # the same choice (and tie-break) as best_config.yaml
        except ResultsError:  # no trial finished
            best = None
        return SearchOutcome(experiment_dir=self.experiment_dir, trials=len(records),
                             best_trial=best["trial_id"] if best else None,
                             best_accuracy=best["best_accuracy"] if best else None, status_counts=counts)

    def _path(self, name: str) -> str:
        return join(self.experiment_dir, name)  # writers create a local folder (atomic_file)

    def has_record(self) -> bool:
        """Whether the experiment folder holds this recorder's tables already."""
        return any(exists_at(self._path(name)) for name in (TRIALS_FILE, EPOCHS_FILE))

    def load_written(self) -> None:
        """A resumed search starts from what was recorded before the interruption.
        Absent tables: nothing recorded yet. Present but unreadable: DamagedRecordError."""
        trials = self._read_if_present(TRIALS_FILE, read_trials)
        epochs = self._read_if_present(EPOCHS_FILE, read_epochs)
        if epochs is not None:
            self._load_epochs(epochs)
        if trials is not None:
            self._load_trials(trials)

    def repair(self) -> dict:
        """Rebuild the tables from those that still read and Ray Tune's trial folders; a
        damaged table is renamed to NAME.damaged-TIME first. Returns what was done."""
        if is_uri(self.experiment_dir):
            raise ResultsError(f"--repair needs a local folder: copy {self.experiment_dir} to this machine, repair "
                               "it there, and copy it back")
        moved = {}
        for name, reader, load in ((TRIALS_FILE, read_trials, self._load_trials),
                                   (EPOCHS_FILE, read_epochs, self._load_epochs)):
            try:
                table = self._read_if_present(name, reader)
            except DamagedRecordError:
                path = Path(self._path(name))
                aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                path.rename(aside)
                moved[name] = str(aside)
                continue
            if table is not None:
                load(table)
        folders = self._load_trial_folders()
        self.write()
        return {"moved_aside": moved, "trial_folders": folders, "trials": len(self.trials),
                "epochs": len(self.epochs)}

    def _read_if_present(self, name: str, reader: Callable[[str], pa.Table]) -> Optional[pa.Table]:
        path = self._path(name)
        if not exists_at(path):
            return None
        try:
            return reader(path)
        except ResultsError as err:
            raise DamagedRecordError(
                f"{err}. The search's record is left as it is; rebuild it from Ray Tune's trial folders with the "
                "same tune command plus --repair (the damaged file is kept beside it)") from None

    def _load_epochs(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            self.epochs[(row["trial_id"], int(row["epoch"]))] = row

    def _load_trials(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            params = {k[len(PARAM_PREFIX):]: v for k, v in row.items() if k.startswith(PARAM_PREFIX) and v is not None}
            self.trials[row["trial_id"]] = {
                "trial_id": row["trial_id"], "status": row["status"], "stop_reason": row["stop_reason"],
                "params": params, "trainable_params": row["trainable_params"], "wall_seconds": row["wall_seconds"],
                "node": row["node"], "error": row["error"]}

    def _load_trial_folders(self) -> int:
        """Fill in, from Ray Tune's per-trial files, the epochs and trials the loaded
        tables lack (rows they hold are kept as they are). Returns the folders read."""
        names = set(self.space.parameter_names())
        folders = 0
        for folder in sorted(Path(self.experiment_dir).glob("*/params.json")):
            folder = folder.parent
            results = _read_results(folder / "result.json")
            trial_id = results[-1]["trial_id"] if results else _trial_id_of(folder.name)
            if trial_id is None:
                continue
            folders += 1
            for result in results:
                for earlier in json.loads(result.get(RESTORED_EPOCHS_KEY) or "[]"):
                    self.epochs.setdefault((trial_id, int(earlier["epoch"])), self._epoch_row(trial_id, earlier))
                if "epoch" in result:
                    self.epochs.setdefault((trial_id, int(result["epoch"])), self._epoch_row(trial_id, result))
            if trial_id not in self.trials:
                params = {k: v for k, v in json.loads((folder / "params.json").read_text()).items() if k in names}
                self.trials[trial_id] = self._rebuilt_record(trial_id, params, results, folder)
        return folders

    def _rebuilt_record(self, trial_id: str, params: dict, results: list[dict], folder: Path) -> dict:
        last = results[-1] if results else {}
        record = {"trial_id": trial_id, "params": params, "node": last.get("node_id") or last.get("node_ip"),
                  "trainable_params": last.get("trainable_params"), "wall_seconds": last.get("time_total_s")}
        error_file = folder / "error.txt"
        epochs, finished = self._last_epoch(trial_id, params)
        if error_file.is_file():
            record.update(status="failed", stop_reason="error",
                          error=_summarised_traceback(error_file.read_text(errors="replace")))
        elif finished:
            record.update(status="completed", stop_reason=f"finished {epochs} epochs")
        else:
            record.update(status="stopped", stop_reason=f"rebuilt from its trial folder after epoch {epochs} "
                                                        "(stopped early or interrupted)")
        return record


def _read_results(path: Path) -> list[dict]:
    """Ray Tune's result.json: one JSON object per report; a line cut off by a crash is skipped."""
    if not path.is_file():
        return []
    results = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in results if isinstance(r, dict) and r.get("trial_id")]


def _trial_id_of(folder_name: str) -> Optional[str]:
    """Tune's trial folder names: TRAINABLE_TRIALID_INDEX_..."""
    match = re.match(r"^_?[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?_([0-9a-f]{8})_\d+_", folder_name)
    return match.group(1) if match else None


def _error_text(trial) -> Optional[str]:
    """The trial's exception as `Type: message` (Ray's task wrapper and colours removed)."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # the pickled error may not load on the driver
        error = None
    if error is not None:
        error = getattr(error, "cause", None) or error  # RayTaskError wraps the real exception
        return _ANSI.sub("", f"{type(error).__name__}: {error}")
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return _summarised_traceback(Path(path).read_text())
    return "unknown error"


def _summarised_traceback(text: str) -> str:
    """`Type: message` of the innermost exception first, then the traceback's tail (colours removed)."""
    text = _ANSI.sub("", text)
    lines = [line for line in text.strip().splitlines() if _EXCEPTION_LINE.match(line)]
    if not lines:
        return text[-4000:]
    name, _, message = lines[-1].partition(":")
    return f"{name.rsplit('.', 1)[-1]}:{message}\n\n{text[-3000:]}"
