"""The Arrow record of a search: `trials` (one row per trial) and `epochs` (one row per
trial per reported epoch), with fixed, typed schemas and a schema version in the metadata.

Metric names follow the training loop's report: `accuracy` is the overall accuracy (%) on
the validation split, `mean_class_accuracy` the mean of the per-class accuracies (%).
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Optional

import pyarrow as pa

from ..errors import ResultsError
from .storage import read_parquet

TRIALS_SCHEMA_VERSION = 1
EPOCHS_SCHEMA_VERSION = 1

# Keys of the schema metadata (also the Parquet file's key-value metadata).
TABLE_KEY = b"pointpeft.table"
VERSION_KEY = b"pointpeft.schema_version"
SPACE_KEY = b"pointpeft.search_space"

PARAM_PREFIX = "param."
TRIAL_STATUSES = ("pending", "running", "completed", "stopped", "failed")
METRICS = ("accuracy", "mean_class_accuracy", "loss")

_TRIAL_HEAD = [("trial_id", pa.string()), ("status", pa.string()), ("stop_reason", pa.string())]
_TRIAL_TAIL = (
    [(f"final_{m}", pa.float64()) for m in METRICS]
    + [(f"best_{m}", pa.float64()) for m in METRICS]
    + [("best_epoch", pa.int64()), ("epochs", pa.int64()), ("trainable_params", pa.int64()),
       ("wall_seconds", pa.float64()), ("node", pa.string()), ("error", pa.string())]
)
_RECORD_KEYS = {"trial_id", "status", "stop_reason", "params", "final", "best", "epochs",
                "trainable_params", "wall_seconds", "node", "error"}

EPOCH_COLUMNS = [
    ("trial_id", pa.string()), ("epoch", pa.int64()), ("lr", pa.float64()),
    ("train_loss", pa.float64()), ("train_accuracy", pa.float64()), ("train_samples_per_second", pa.float64()),
    ("val_loss", pa.float64()), ("val_accuracy", pa.float64()), ("val_mean_class_accuracy", pa.float64()),
]


def param_column(path: str) -> str:
    return PARAM_PREFIX + path


# --- trials ---

def trials_schema(space) -> pa.Schema:
    """Fixed columns, plus one typed `param.<dotted path>` column per parameter of `space`."""
    params = [(param_column(path), dtype) for path, dtype in space.column_types().items()]
    fields = [pa.field(name, dtype, nullable=name != "trial_id") for name, dtype in _TRIAL_HEAD + params + _TRIAL_TAIL]
    metadata = {TABLE_KEY: b"trials", VERSION_KEY: str(TRIALS_SCHEMA_VERSION).encode(),
                SPACE_KEY: json.dumps(space.to_dict()).encode()}
    return pa.schema(fields, metadata=metadata)


def trials_table(records: Iterable[Mapping[str, Any]], space) -> pa.Table:
    """One row per trial record:
        {trial_id, status, stop_reason, params: {path: value}, final: {accuracy,
         mean_class_accuracy, loss}, best: {..., epoch}, epochs, trainable_params,
         wall_seconds, node, error}
    Only trial_id and status are required; a parameter a trial did not sample (its
    condition was false) is null."""
    return _table([trial_row(record, space) for record in records], trials_schema(space))


def trial_row(record: Mapping[str, Any], space) -> dict[str, Any]:
    """A record as the table's columns: params and metrics flattened (param.X, final_X,
    best_X); its other keys are columns already (_table skips the nested ones)."""
    unknown = set(record) - _RECORD_KEYS
    if unknown:
        raise ResultsError(f"trial record: unknown key(s) {sorted(unknown)}; expected {sorted(_RECORD_KEYS)}")
    trial_id = record.get("trial_id")
    if trial_id is None or record.get("status") not in TRIAL_STATUSES:
        raise ResultsError(f"trial record {trial_id!r}: needs a trial_id and a status in {TRIAL_STATUSES}, "
                           f"got status {record.get('status')!r}")
    return {**record, **_param_values(trial_id, record.get("params") or {}, space),
            **_metric_values(trial_id, "final", record.get("final") or {}, METRICS),
            **_metric_values(trial_id, "best", record.get("best") or {}, METRICS + ("epoch",))}


def _param_values(trial_id, params: Mapping[str, Any], space) -> dict[str, Any]:
    names = space.parameter_names()
    unknown = [path for path in params if path not in names]
    if unknown:
        raise ResultsError(f"trial {trial_id!r}: {unknown} are not parameters of the search space {names}")
    return {param_column(path): params.get(path) for path in names}


def _metric_values(trial_id, prefix: str, metrics: Mapping[str, Any], allowed: tuple) -> dict[str, Any]:
    unknown = set(metrics) - set(allowed)
    if unknown:
        raise ResultsError(f"trial {trial_id!r}: {prefix}: unknown metric(s) {sorted(unknown)}; expected {allowed}")
    return {f"{prefix}_{name}": metrics.get(name) for name in allowed}


# --- epochs ---

def epochs_schema() -> pa.Schema:
    fields = [pa.field(name, dtype, nullable=name not in ("trial_id", "epoch")) for name, dtype in EPOCH_COLUMNS]
    return pa.schema(fields, metadata={TABLE_KEY: b"epochs", VERSION_KEY: str(EPOCHS_SCHEMA_VERSION).encode()})


def epochs_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """One row per reported epoch: {trial_id, epoch, lr, train_loss, train_accuracy,
    train_samples_per_second, val_loss, val_accuracy, val_mean_class_accuracy}. Other keys
    are ignored, so the training loop's report (or a Ray result) can be passed as it is;
    val_* are null on epochs without evaluation."""
    rows = list(rows)
    for row in rows:
        if row.get("trial_id") is None or row.get("epoch") is None:
            raise ResultsError(f"epoch row needs trial_id and epoch, got keys {sorted(row)}")
    return _table(rows, epochs_schema())


def final_and_best(epoch_rows: Iterable[Mapping[str, Any]]) -> tuple[dict, dict]:
    """A trial's `final` (last evaluated epoch) and `best` (highest val accuracy, the
    earliest on ties) metrics, as trial records take them, from its reported epochs."""
    evaluated = [row for row in epoch_rows if row.get("val_accuracy") is not None]
    if not evaluated:
        return {}, {}
    best = max(evaluated, key=lambda row: row["val_accuracy"])  # max keeps the first of equals

    def metrics(row):
        return {name: row.get(f"val_{name}") for name in METRICS}
    return metrics(evaluated[-1]), {**metrics(best), "epoch": best.get("epoch")}


# --- building and reading ---

def _table(rows: list[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """The schema's columns of `rows` (a key a row lacks is null; other keys are ignored)."""
    columns = [_typed_array(field, [row.get(field.name) for row in rows]) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _typed_array(field: pa.Field, values: list) -> pa.Array:
    """Values checked against the column type first: pyarrow would silently truncate 3.5
    into an int64 column."""
    check = _TYPE_CHECKS[str(field.type)]
    for value in values:
        if value is None:
            if not field.nullable:
                raise ResultsError(f"column {field.name}: null is not allowed")
        elif not check(value):
            raise ResultsError(f"column {field.name}: {value!r} is not a valid {field.type}")
    if pa.types.is_integer(field.type):
        values = [None if v is None else int(v) for v in values]
    return pa.array(values, type=field.type)


def _is_number(value) -> bool:
    # numpy scalars too (e.g. from a Ray result), without importing numpy here.
    numpy_number = type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iuf"
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or numpy_number


_TYPE_CHECKS = {
    "int64": lambda v: _is_number(v) and math.isfinite(v) and float(v) == int(v),
    "double": _is_number,
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool) or type(v).__name__ == "bool_",
}


def read_trials(path) -> pa.Table:
    return _read_checked(path, b"trials", TRIALS_SCHEMA_VERSION)


def read_epochs(path) -> pa.Table:
    return _read_checked(path, b"epochs", EPOCHS_SCHEMA_VERSION)


def _read_checked(path, table_name: bytes, version: int) -> pa.Table:
    table = read_parquet(path)
    metadata = table.schema.metadata or {}
    found_name = metadata.get(TABLE_KEY)
    if found_name != table_name:
        raise ResultsError(f"{path}: not a pointpeft-ray {table_name.decode()} table "
                           f"(metadata {TABLE_KEY.decode()} = {found_name!r})")
    found = metadata.get(VERSION_KEY, b"?").decode()
    if found != str(version):
        raise ResultsError(f"{path}: {table_name.decode()} table has schema version {found}; this version of "
                           f"pointpeft-ray reads version {version} (re-run the search, or read it with the "
                           "pointpeft-ray release that wrote it)")
    return table


def search_space_of(table: pa.Table) -> Optional[dict]:
    """The search space a trials table was written with (as SearchSpace.to_dict())."""
    raw = (table.schema.metadata or {}).get(SPACE_KEY)
    return json.loads(raw) if raw else None


# --- tasks (multi-task fine-tuning) ---

TASKS_SCHEMA_VERSION = 2  # 2: variant, node_ip; node is the Ray node id
TASK_STATUSES = ("completed", "failed")
TASK_COLUMNS = [
    ("task", pa.string()), ("task_name", pa.string()), ("mode", pa.string()), ("variant", pa.string()),
    ("status", pa.string()),
    ("best_accuracy", pa.float64()), ("best_epoch", pa.int64()), ("final_accuracy", pa.float64()),
    ("final_mean_class_accuracy", pa.float64()), ("final_loss", pa.float64()), ("epochs", pa.int64()),
    ("trainable_params", pa.int64()), ("total_params", pa.int64()), ("adapter_path", pa.string()),
    ("node", pa.string()), ("node_ip", pa.string()), ("wall_seconds", pa.float64()), ("error", pa.string()),
    ("config", pa.string()),
]


def tasks_schema() -> pa.Schema:
    fields = [pa.field(name, dtype, nullable=name not in ("task", "status")) for name, dtype in TASK_COLUMNS]
    return pa.schema(fields, metadata={TABLE_KEY: b"tasks", VERSION_KEY: str(TASKS_SCHEMA_VERSION).encode()})


def tasks_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """One row per fine-tuned task (`config` is the task's TrainConfig as JSON; the
    epochs of a task go to an epochs table with trial_id = the task's label)."""
    rows = list(rows)
    for row in rows:
        unknown = set(row) - {name for name, _ in TASK_COLUMNS}
        if unknown or row.get("status") not in TASK_STATUSES:
            raise ResultsError(f"task row {row.get('task')!r}: unknown key(s) {sorted(unknown)} or status "
                               f"{row.get('status')!r} (expected one of {TASK_STATUSES})")
    return _table(rows, tasks_schema())


def read_tasks(path) -> pa.Table:
    return _read_checked(path, b"tasks", TASKS_SCHEMA_VERSION)
