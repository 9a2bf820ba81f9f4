"""The Arrow record of a search: typed trials / epochs tables, atomic Parquet writes,
schema-version checks, independent readers, and best_config.yaml. No Ray, no training."""
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.results import (
    TRIALS_SCHEMA_VERSION, ResultsError, best_trial, epochs_table, final_and_best, read_epochs,
    read_trials, search_space_of, trials_table, write_best_config, write_table_atomic,
)
from pointpeft_ray.results import storage
from pointpeft_ray.search import SearchSpace

CPU_DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "cpu_demo.yaml"


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_yaml(CPU_DEMO)


def epoch_rows(trial_id, accuracies):
    """What the training loop reports per epoch (plus keys the table ignores)."""
    return [{"trial_id": trial_id, "epoch": epoch, "lr": 1e-3 / epoch, "train_loss": 2.0 / epoch,
             "train_accuracy": 30.0 + epoch, "train_samples_per_second": 120.5, "trainable_params": 1000,
             "val_loss": None if acc is None else 1.0 / epoch, "val_accuracy": acc,
             "val_mean_class_accuracy": None if acc is None else acc - 2.0,
             "val_per_class_accuracy": [1.0, 2.0], "best_accuracy": 0.0}
            for epoch, acc in enumerate(accuracies, start=1)]


def records():
    final_a, best_a = final_and_best(epoch_rows("a", [50.0, 70.0, 65.0]))
    final_b, best_b = final_and_best(epoch_rows("b", [None, 60.0]))
    return [
        {"trial_id": "a", "status": "completed", "stop_reason": "max_epochs",
         "params": {"peft.prompt_length": 8, "peft.neighbours": 6, "peft.memory_bank": True, "peft.top_k": 4,
                    "optim.lr": 1e-3},
         "final": final_a, "best": best_a, "epochs": 3, "trainable_params": 123456, "wall_seconds": 12.5,
         "node": "10.0.0.1"},
        {"trial_id": "b", "status": "stopped", "stop_reason": "asha",
         "params": {"peft.prompt_length": 4, "peft.neighbours": 4, "peft.memory_bank": False, "optim.lr": 2e-4},
         "final": final_b, "best": best_b, "epochs": 2, "trainable_params": 100000, "wall_seconds": 7.0,
         "node": "10.0.0.2"},
        {"trial_id": "c", "status": "failed", "params": {"peft.prompt_length": 6}, "epochs": 0,
         "node": "10.0.0.1", "error": "RuntimeError: out of memory"},
    ]


def no_temporaries(folder):
    return [name for name in os.listdir(folder) if name.startswith(".")] == []


# --- building ---

def test_trials_table_has_one_typed_column_per_parameter_and_nulls_for_skipped_ones(space):
    table = trials_table(records(), space)
    assert table.num_rows == 3
    types = dict(zip(table.column_names, table.schema.types))
    assert types["param.peft.prompt_length"] == pa.int64()
    assert types["param.peft.memory_bank"] == pa.bool_()
    assert types["param.peft.top_k"] == pa.int64()
    assert types["param.optim.lr"] == pa.float64()
    assert types["best_accuracy"] == pa.float64() and types["epochs"] == pa.int64()
    rows = table.to_pylist()
    assert rows[1]["param.peft.top_k"] is None          # bank off: top_k was never sampled
    assert rows[0]["best_accuracy"] == 70.0 and rows[0]["best_epoch"] == 2
    assert rows[0]["final_accuracy"] == 65.0 and rows[0]["final_mean_class_accuracy"] == 63.0
    assert rows[2]["error"] == "RuntimeError: out of memory" and rows[2]["best_accuracy"] is None


def test_empty_trials_table_keeps_its_schema(space):
    table = trials_table([], space)
    assert table.num_rows == 0 and "param.optim.lr" in table.column_names


def test_epochs_table_keeps_the_reported_metrics_and_nulls_unevaluated_epochs():
    table = epochs_table(epoch_rows("b", [None, 60.0]))
    assert table.column_names == ["trial_id", "epoch", "lr", "train_loss", "train_accuracy",
                                  "train_samples_per_second", "val_loss", "val_accuracy", "val_mean_class_accuracy"]
    rows = table.to_pylist()
    assert rows[0]["val_accuracy"] is None and rows[1]["val_accuracy"] == 60.0


@pytest.mark.parametrize("change, message", [
    ({"epochs": 3.5}, "column epochs: 3.5 is not a valid int64"),
    ({"wall_seconds": "fast"}, "column wall_seconds"),
    ({"status": "done"}, "status in"),
    ({"stop_reasn": "asha"}, "unknown key"),
    ({"params": {"peft.adapter_dim": 8}}, "not parameters of the search space"),
    ({"best": {"acc": 1.0}}, "best: unknown metric"),
])
def test_bad_trial_records_are_clear_errors(space, change, message):
    record = {**records()[0], **change}
    with pytest.raises(ResultsError, match=message):
        trials_table([record], space)


# --- writing and reading ---

def test_round_trip_and_independent_readers(tmp_path, space):
    trials, epochs = trials_table(records(), space), epochs_table(epoch_rows("a", [50.0, 70.0, 65.0]))
    trials_path, epochs_path = tmp_path / "trials.parquet", tmp_path / "epochs.parquet"
    write_table_atomic(trials, trials_path)
    write_table_atomic(epochs, epochs_path)
    assert read_trials(trials_path).equals(trials) and read_epochs(epochs_path).equals(epochs)
    assert search_space_of(read_trials(trials_path)) == space.to_dict()
    assert no_temporaries(tmp_path)

    frame = pd.read_parquet(trials_path)
    assert list(frame["trial_id"]) == ["a", "b", "c"]
    assert frame["param.peft.top_k"].isna().tolist() == [False, True, True]
    assert frame.loc[0, "param.optim.lr"] == pytest.approx(1e-3)
    assert pd.read_parquet(epochs_path)["val_accuracy"].tolist() == [50.0, 70.0, 65.0]


def test_polars_reads_the_tables(tmp_path, space):
    polars = pytest.importorskip("polars")
    path = tmp_path / "trials.parquet"
    write_table_atomic(trials_table(records(), space), path)
    frame = polars.read_parquet(path)
    assert frame["trial_id"].to_list() == ["a", "b", "c"]
    assert frame.schema["param.peft.memory_bank"] == polars.Boolean
    assert frame["param.peft.top_k"].to_list() == [4, None, None]


def test_duckdb_reads_the_tables_and_the_schema_version(tmp_path, space):
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "trials.parquet"
    write_table_atomic(trials_table(records(), space), path)
    best = duckdb.sql(f"SELECT trial_id, \"param.peft.prompt_length\" FROM '{path}' "
                      "WHERE status <> 'failed' ORDER BY best_accuracy DESC LIMIT 1").fetchall()
    assert best == [("a", 8)]
    metadata = dict(duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{path}')").fetchall())
    assert metadata["pointpeft.schema_version"] == str(TRIALS_SCHEMA_VERSION)
    assert metadata["pointpeft.table"] == "trials"


def test_rewrite_replaces_the_file_and_leaves_no_temporary(tmp_path, space):
    path = tmp_path / "results" / "trials.parquet"
    write_table_atomic(trials_table(records()[:1], space), path)
    write_table_atomic(trials_table(records(), space), path)
    assert read_trials(path).num_rows == 3
    assert no_temporaries(path.parent)


def test_a_failed_write_keeps_the_old_file(tmp_path, space, monkeypatch):
    path = tmp_path / "trials.parquet"
    write_table_atomic(trials_table(records()[:1], space), path)

    def crash_half_way(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")
    monkeypatch.setattr(storage.pq, "write_table", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_table_atomic(trials_table(records(), space), path)
    monkeypatch.undo()
    assert read_trials(path).num_rows == 1
    assert no_temporaries(tmp_path)


def test_filesystem_uris_rename_on_the_filesystem(tmp_path, space):
    uri = (tmp_path / "sub" / "trials.parquet").as_uri()
    write_table_atomic(trials_table(records(), space), uri)
    assert read_trials(uri).num_rows == 3
    assert no_temporaries(tmp_path / "sub")


def test_object_stores_are_written_directly(tmp_path, space, monkeypatch):
    written = []
    real_write = pq.write_table
    monkeypatch.setattr(storage, "OBJECT_STORES", frozenset({"local"}))  # treat the local fs as a store
    monkeypatch.setattr(storage.pq, "write_table", lambda table, where, **kw: written.append(where)
                        or real_write(table, where, **kw))
    uri = (tmp_path / "trials.parquet").as_uri()
    write_table_atomic(trials_table(records(), space), uri)
    assert written == [str(tmp_path / "trials.parquet")]  # no temporary name, no rename
    assert read_trials(uri).num_rows == 3


def test_schema_version_and_table_kind_are_checked(tmp_path, space):
    table = trials_table(records(), space)
    future = table.replace_schema_metadata({**table.schema.metadata, b"pointpeft.schema_version": b"99"})
    path = tmp_path / "future.parquet"
    write_table_atomic(future, path)
    with pytest.raises(ResultsError, match=f"schema version 99; .* reads version {TRIALS_SCHEMA_VERSION}"):
        read_trials(path)
    epochs_path = tmp_path / "epochs.parquet"
    write_table_atomic(epochs_table(epoch_rows("a", [1.0])), epochs_path)
    with pytest.raises(ResultsError, match="not a pointpeft-ray trials table"):
        read_trials(epochs_path)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(ResultsError, match="not a pointpeft-ray epochs table"):
        read_epochs(tmp_path / "foreign.parquet")
    with pytest.raises(ResultsError, match="not found"):
        read_trials(tmp_path / "missing.parquet")


# --- best_config.yaml ---

def test_best_config_loads_and_equals_the_best_trials_config(tmp_path, space):
    rows = records()
    configs = {row["trial_id"]: space.apply(None, row["params"]) for row in rows[:2]}
    path = tmp_path / "best_config.yaml"
    assert write_best_config(trials_table(rows, space), configs, path) == "a"
    loaded = TrainConfig.from_yaml(path)
    assert loaded == configs["a"]
    assert loaded.peft.top_k == 4 and loaded.model.preset == "small"
    assert no_temporaries(tmp_path)


def test_best_trial_ignores_failures_and_breaks_ties_on_loss(space):
    rows = trials_table(records(), space).to_pylist()
    rows[2].update(status="failed", best_accuracy=99.0)           # a failure never wins
    rows[1].update(best_accuracy=70.0, best_loss=0.1)            # same accuracy as "a", lower loss
    assert best_trial(rows)["trial_id"] == "b"
    assert best_trial(rows, metric="best_loss", mode="min")["trial_id"] == "b"
    with pytest.raises(ResultsError, match="no finished trial"):
        best_trial([rows[2]])
