"""best_config.yaml: the best trial's full TrainConfig, ready for `pointpeft-ray train`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import pyarrow as pa
import yaml

from ..errors import ResultsError
from .storage import write_text

# Early-stopped trials (ASHA) were evaluated on the epochs they ran; failed or unfinished
# ones do not compete.
FINISHED = ("completed", "stopped")


def best_trial(trials: Union[pa.Table, Iterable[Mapping[str, Any]]], metric: str = "best_accuracy",
               mode: str = "max") -> dict:
    """The finished trial with the best `metric` (a trials-table column); ties go to the
    lower best_loss, then to the earlier trial. `trials`: a trials table, or its rows."""
    rows = trials.to_pylist() if isinstance(trials, pa.Table) else list(trials)
    if mode not in ("max", "min"):
        raise ResultsError(f"mode must be 'max' or 'min', got {mode!r}")
    ranked = rank_trials(rows, FINISHED, metric, mode)
    if not ranked:
        raise ResultsError(f"no finished trial ({' or '.join(FINISHED)}) has a value for {metric!r}")
    return ranked[0]


def rank_trials(rows: Iterable[Mapping[str, Any]], statuses: Iterable[str], metric: str = "best_accuracy",
                mode: str = "max") -> list:
    """The rows with one of `statuses` and a value for `metric`, best first; ties go to the
    lower best_loss, then to the earlier row."""
    sign = -1.0 if mode == "max" else 1.0
    candidates = [(index, row) for index, row in enumerate(rows)
                  if row.get("status") in statuses and number_or_none(row.get(metric)) is not None]

    def order(item):
        index, row = item
        loss = number_or_none(row.get("best_loss"))
        return (sign * row[metric], math.inf if loss is None else loss, index)
    return [row for _, row in sorted(candidates, key=order)]


def number_or_none(value: Any):
    """None for missing and NaN values (NaN is neither rankable nor valid JSON)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_best_config(trials, configs: Mapping[str, Any], path: str | Path,
                      metric: str = "best_accuracy", mode: str = "max") -> str:
    """Write the best trial's full config (from `configs`, by trial id: TrainConfig objects
    or their dicts) as YAML, atomically.
    Returns the trial id. The file loads with TrainConfig.from_yaml."""
    from ..engine.config import TrainConfig  # torch: `pointpeft-ray report` ranks trials without it

    best = best_trial(trials, metric, mode)
    trial_id = best["trial_id"]
    if trial_id not in configs:
        raise ResultsError(f"best trial {trial_id!r} has no config among {sorted(configs)}")
    header = (f"# Best trial of a pointpeft-ray search: {trial_id} ({metric} {best[metric]}"
              f", best epoch {best.get('best_epoch')}).\n# Train it again: pointpeft-ray train {Path(path).name}\n")
    config = configs[trial_id]
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config, where=f"config of trial {trial_id}")
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    write_text(path, header + body)  # a local path or a URI
    return trial_id
