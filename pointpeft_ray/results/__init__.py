"""The Arrow record of a search: trials.parquet, epochs.parquet (typed, versioned, written
atomically) and best_config.yaml."""
from .best_config import best_trial, write_best_config
from ..errors import ResultsError
from .storage import write_table_atomic
from .tables import (
    EPOCHS_SCHEMA_VERSION, TRIALS_SCHEMA_VERSION, epochs_table, final_and_best, param_column,
    read_epochs, read_trials, search_space_of, trials_table,
)

__all__ = [
    "TRIALS_SCHEMA_VERSION", "EPOCHS_SCHEMA_VERSION", "ResultsError", "trials_table", "epochs_table",
    "final_and_best", "param_column", "write_table_atomic", "read_trials", "read_epochs",
    "search_space_of", "best_trial", "write_best_config",
]
