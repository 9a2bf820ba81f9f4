"""Which searched parameters mattered: Optuna's PED-ANOVA importances, computed from a
trials table alone (no Ray, no study database), so a results folder copied from a cluster
can be analysed anywhere.

PED-ANOVA (`optuna.importance.PedAnovaImportanceEvaluator`) is used rather than fANOVA
because fANOVA needs scikit-learn, which this project does not install. From Optuna 5 on it
also ranks conditional parameters (those absent from some trials); with an older Optuna it
ranks only the parameters every finished trial sampled, and the others are listed as not
ranked, with the reason.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from ..search.expressions import BoundExpression, parse_bound
from ..search.parameters import same_value
from .best_config import FINISHED
from .tables import param_column

EVALUATOR_NAME = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"
MIN_TRIALS = 2
OBJECTIVE = "best_accuracy"


@dataclass
class Importances:
    evaluator: str
    trials_used: int
    values: dict[str, float] = field(default_factory=dict)        # parameter -> share, largest first
    not_ranked: dict[str, str] = field(default_factory=dict)      # parameter -> why
    message: Optional[str] = None                                 # why there are no values at all
    notes: list[str] = field(default_factory=list)                # Optuna's warnings, once each


def param_importances(trial_rows: Iterable[Mapping[str, Any]], space: Optional[Mapping]) -> Importances:
    """Importances of the searched parameters for the best validation accuracy, over the
    finished (completed or early-stopped) trials. `space`: the search space as stored in
    the trials file (SearchSpace.to_dict())."""
    finished = [row for row in trial_rows if row.get("status") in FINISHED and _finite(row.get(OBJECTIVE))]
    result = Importances(EVALUATOR_NAME, trials_used=len(finished))
    if len(finished) < MIN_TRIALS:
        result.message = (f"not enough trials: {len(finished)} finished trial(s) with an accuracy, "
                          f"importances need at least {MIN_TRIALS}")
    elif space is None:
        result.message = "no search space in the trials file's metadata"
    else:
        distributions = search_distributions(space, finished)
        if not distributions:
            result.message = "the search space has no sampled (non-fixed) parameter"
        else:
            _evaluate(result, finished, distributions)
    return result


# --- the search space as Optuna distributions ---

def search_distributions(space: Mapping, rows: list[Mapping[str, Any]]) -> dict:
    """One Optuna distribution per sampled parameter, wide enough for every row's value.
    Fixed parameters are not Optuna parameters, so they are left out."""
    distributions = {}
    for path, spec in (space.get("parameters") or {}).items():
        observed = [row[param_column(path)] for row in rows if row.get(param_column(path)) is not None]
        if not observed:
            continue
        kind = spec.get("type")
        if kind == "categorical":
            distributions[path] = _categorical(spec, observed)
        elif kind in ("int", "float"):
            distributions[path] = _numeric(path, spec, rows, observed)
    return distributions


def _categorical(spec: Mapping, observed: list):
    from optuna.distributions import CategoricalDistribution

    choices = list(spec.get("choices") or [])
    # A value outside the stored choices (a space edited mid-search) must still be accepted.
    for value in observed:
        if not any(same_value(value, choice) for choice in choices):
            choices.append(value)
    return CategoricalDistribution(choices)


def _numeric(path: str, spec: Mapping, rows: list[Mapping[str, Any]], observed: list):
    from optuna.distributions import FloatDistribution, IntDistribution

    integer = spec["type"] == "int"
    low = min([*_bound_values(spec["low"], rows), *observed])
    high = max([*_bound_values(spec["high"], rows), *observed])
    if integer:
        low, high = math.ceil(low), math.floor(high)
    log = bool(spec.get("log")) and low > 0
    step = _grid_step(spec.get("step"), low, observed, integer)
    if step is not None and step != 1:
        high = low + step * math.floor((high - low) / step + 1e-9)
    if integer:
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=log, step=None if log else step)


def _bound_values(raw, rows: list[Mapping[str, Any]]) -> list[float]:
    """A bound as every row resolves it. An expression over earlier parameters (top_k <=
    prompt_length - 2) differs per trial; the distribution spans them all."""
    bound = parse_bound(raw)
    if not isinstance(bound, BoundExpression):
        return [bound]
    values = []
    for row in rows:
        given = {name: row.get(param_column(name)) for name in bound.names}
        if any(value is None for value in given.values()):
            continue
        try:
            values.append(bound.evaluate(given))
        except (ArithmeticError, KeyError, TypeError, ValueError):
            continue
    return values


def _grid_step(step, low: float, observed: list, integer: bool):
    """The spec's step when every value lies on its grid from `low`; otherwise none (a
    bound that moved with another parameter shifts the grid)."""
    if step and all(math.isclose((value - low) / step, round((value - low) / step), abs_tol=1e-9)
                    for value in observed):
        return step
    return 1 if integer else None


# --- evaluation ---

def _evaluate(result: Importances, rows: list[Mapping[str, Any]], distributions: dict) -> None:
    import optuna

    # Optuna logs every study it creates; a report prints only its own lines.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            study = _study_of(rows, distributions)
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    finally:
        optuna.logging.set_verbosity(verbosity)
    result.values = dict(sorted(values.items(), key=lambda item: -item[1]))
    result.notes = list(dict.fromkeys(str(w.message).splitlines()[0] for w in caught))
    for path in distributions:
        if path not in result.values:
            result.not_ranked[path] = _why_not_ranked(path, rows)


def _study_of(rows: list[Mapping[str, Any]], distributions: dict):
    """An in-memory study holding one finished trial per row. A parameter a trial did not
    sample (its `when:` condition was false) is simply absent from that trial."""
    import optuna

    study = optuna.create_study(direction="maximize")
    for row in rows:
        params = {path: _plain(row[param_column(path)]) for path in distributions
                  if row.get(param_column(path)) is not None}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={path: distributions[path] for path in params},
            value=float(row[OBJECTIVE])))
    return study


def _why_not_ranked(path: str, rows: list[Mapping[str, Any]]) -> str:
    absent = sum(1 for row in rows if row.get(param_column(path)) is None)
    if absent:
        return (f"conditional: absent from {absent} of {len(rows)} finished trials, and this Optuna "
                "ranks only parameters present in every trial")
    return "not ranked by the evaluator"


def _plain(value):
    # Optuna wants Python scalars; Parquet readers may hand back numpy ones.
    return value.item() if hasattr(value, "item") else value


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
