"""`pointpeft-ray report`: what a search found, read from its experiment folder alone.

The folder holds trials.parquet, epochs.parquet and best_config.yaml; any of them may be
missing while a search runs, and the folder may have been copied off a cluster, so only the
files are read (no Ray). Functions here return data (`build_report` -> `Report`);
`format_report` and `report_payload` turn it into the terminal text and the JSON.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from ..errors import ResultsError
from ..file_names import (ACCURACY_VS_PARAMS_PLOT, ACCURACY_VS_SIZE_PLOT, BEST_CONFIG_FILE, EPOCHS_FILE,
                          LEARNING_CURVES_PLOT, PLOTS_DIR, TRIALS_FILE)
from ..output import format_table
from . import plots
from .best_config import FINISHED, best_trial, number_or_none, rank_trials
from .importance import Importances, param_importances
from .tables import PARAM_PREFIX, TRIAL_STATUSES, final_and_best, read_epochs, read_trials, search_space_of

EXPECTED_FILES = (TRIALS_FILE, EPOCHS_FILE, BEST_CONFIG_FILE)
# Failed trials never compete (as for best_config.yaml); the others are ranked on what
# they reached so far, so a running search shows its current leaders.
RANKED_STATUSES = ("completed", "stopped", "running", "pending")


# --- reading the folder ---

@dataclass
class Experiment:
    directory: Path
    trials: list[dict]                              # trial rows, completed with epoch progress
    curves: dict[str, list[dict]]                   # trial id -> its epoch rows, by epoch
    space: Optional[dict]                           # SearchSpace.to_dict() from the trials file
    best_config_text: Optional[str]
    notes: list[str] = field(default_factory=list)  # what was missing or inferred


def load_experiment(directory: str | Path) -> Experiment:
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"experiment folder not found: {directory}")
    present = {name: directory / name for name in EXPECTED_FILES if (directory / name).is_file()}
    if not present:
        raise ResultsError(f"{directory}: no search results here; expected at least one of "
                           f"{', '.join(EXPECTED_FILES)} (written by a pointpeft-ray search)")
    notes = [f"{name} not written yet" for name in EXPECTED_FILES if name not in present]
    trials_table = read_trials(present[TRIALS_FILE]) if TRIALS_FILE in present else None
    curves = _curves(read_epochs(present[EPOCHS_FILE])) if EPOCHS_FILE in present else {}
    rows = trials_table.to_pylist() if trials_table is not None else []
    rows, inferred = _with_epoch_progress(rows, curves)
    if inferred:
        notes.append(f"{inferred} trial(s) known only from {EPOCHS_FILE}: shown as running, parameters unknown")
    best_text = present[BEST_CONFIG_FILE].read_text() if BEST_CONFIG_FILE in present else None
    space = search_space_of(trials_table) if trials_table is not None else None
    return Experiment(directory, rows, curves, space, best_text, notes)


def _curves(epochs_table) -> dict[str, list[dict]]:
    """Epoch rows per trial, in epoch order. A trial restored from a checkpoint may report
    an epoch again; its latest report wins."""
    by_trial: dict[str, dict[int, dict]] = {}
    for row in epochs_table.to_pylist():
        by_trial.setdefault(row["trial_id"], {})[row["epoch"]] = row
    return {trial_id: [epochs[e] for e in sorted(epochs)] for trial_id, epochs in by_trial.items()}


def _with_epoch_progress(rows: list[dict], curves: Mapping[str, list[dict]]) -> tuple[list[dict], int]:
    """Trial rows whose metrics are not recorded yet (a running trial) take them from its
    epochs, and trials that only have epochs so far are added as running. Returns the rows
    and how many were added."""
    completed = [_fill_from_epochs(row, curves.get(row["trial_id"], [])) for row in rows]
    known = {row["trial_id"] for row in rows}
    added = [_fill_from_epochs({"trial_id": trial_id, "status": "running"}, epochs)
             for trial_id, epochs in curves.items() if trial_id not in known]
    return completed + added, len(added)


def _fill_from_epochs(row: dict, epochs: list[dict]) -> dict:
    if not epochs or row.get("status") == "failed" or number_or_none(row.get("best_accuracy")) is not None:
        return row
    final, best = final_and_best(epochs)
    filled = dict(row)
    filled.update({f"final_{name}": value for name, value in final.items()})
    filled.update({f"best_{name}": value for name, value in best.items()})
    if filled.get("epochs") is None:
        filled["epochs"] = len(epochs)
    return filled


# --- what the report holds ---

@dataclass
class Report:
    experiment: Experiment
    leaderboard: list[dict]
    ranked_count: int
    status_counts: dict[str, int]
    failures: list[dict]
    best_config: dict
    importances: Importances
    figures: dict[str, plots.PlotOutcome]            # name -> PNG path, or why it was skipped
    pareto: list[dict]


def build_report(directory: str | Path, top: int = 10, plots_dir: str | Path | None = None,
                 make_plots: bool = True) -> Report:
    """Everything the report shows. Plots go to `plots_dir` (default DIRECTORY/plots)."""
    experiment = load_experiment(directory)
    ranked = rank_trials(experiment.trials, RANKED_STATUSES)
    finished = [row for row in ranked if row.get("status") in FINISHED]
    searched = searched_parameters(experiment)
    leaderboard = [_leaderboard_entry(rank, row, searched) for rank, row in enumerate(ranked[:top], start=1)]
    figures = {}
    if make_plots:
        folder = Path(plots_dir) if plots_dir is not None else experiment.directory / PLOTS_DIR
        figures = _draw(experiment, ranked[:top], finished, searched, folder)
    return Report(experiment, leaderboard, len(ranked), status_counts(experiment.trials),
                  failures(experiment.trials), best_config(experiment),
                  param_importances(experiment.trials, experiment.space), figures, pareto_trials(finished))


def pareto_trials(finished: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The finished trials with a best accuracy that no other beats on both best accuracy
    and trainable parameters, smallest first."""
    points = [(row["trainable_params"], row["best_accuracy"], row["trial_id"]) for row in finished
              if row.get("trainable_params") is not None and number_or_none(row.get("best_accuracy")) is not None]
    return [{"trial_id": trial_id, "trainable_params": size, "best_accuracy": accuracy}
            for size, accuracy, trial_id in plots.pareto_front(points)]


def searched_parameters(experiment: Experiment) -> dict[str, dict]:
    """Dotted path -> spec of every sampled (non-fixed) parameter, from the stored space;
    without one, the trials table's parameter columns (spec unknown)."""
    if experiment.space:
        return {path: spec for path, spec in experiment.space.get("parameters", {}).items()
                if spec.get("type") != "fixed"}
    columns = dict.fromkeys(name for row in experiment.trials for name in row if name.startswith(PARAM_PREFIX))
    return {name.removeprefix(PARAM_PREFIX): {} for name in columns}


def status_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(row.get("status") for row in rows)
    return {status: counts.get(status, 0) for status in TRIAL_STATUSES}


def failures(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Failed trials with the first line of their error (the rest is a traceback)."""
    return [{"trial_id": row["trial_id"], "error": _first_line(row.get("error")) or "(no error recorded)"}
            for row in rows if row.get("status") == "failed"]


def best_config(experiment: Experiment) -> dict:
    """best_config.yaml as written by the search; until then, the best finished trial's
    parameters."""
    if experiment.best_config_text is not None:
        return {"source": BEST_CONFIG_FILE, "trial_id": None, "text": experiment.best_config_text}
    try:
        best = best_trial(experiment.trials)
    except ResultsError:
        return {"source": None, "trial_id": None, "text": None}
    params = {name.removeprefix(PARAM_PREFIX): value for name, value in best.items()
              if name.startswith(PARAM_PREFIX) and value is not None}
    return {"source": f"trial {best['trial_id']} (parameters only)", "trial_id": best["trial_id"],
            "text": yaml.safe_dump(params, sort_keys=False)}


def _leaderboard_entry(rank: int, row: Mapping[str, Any], searched: Mapping[str, dict]) -> dict:
    return {"rank": rank, "trial_id": row["trial_id"], "status": row.get("status"),
            "best_accuracy": number_or_none(row.get("best_accuracy")),
            "best_mean_class_accuracy": number_or_none(row.get("best_mean_class_accuracy")),
            "best_loss": number_or_none(row.get("best_loss")), "best_epoch": row.get("best_epoch"),
            "epochs": row.get("epochs"), "trainable_params": row.get("trainable_params"),
            "wall_seconds": number_or_none(row.get("wall_seconds")),
            "params": {path: row.get(PARAM_PREFIX + path) for path in searched}}


def _draw(experiment: Experiment, top_rows: list[dict], finished: list[dict], searched: dict,
          folder: Path) -> dict[str, plots.PlotOutcome]:
    figures: dict[str, plots.PlotOutcome] = {}
    if experiment.curves:
        figures["learning_curves"] = plots.learning_curves_png(
            experiment.curves, [row["trial_id"] for row in top_rows], folder / LEARNING_CURVES_PLOT)
    else:
        figures["learning_curves"] = plots.Skipped(f"no epochs recorded ({EPOCHS_FILE} missing or empty)")
    figures["accuracy_vs_params"] = plots.accuracy_vs_params_png(finished, searched, folder / ACCURACY_VS_PARAMS_PLOT)
    figures["accuracy_vs_trainable_params"] = plots.accuracy_vs_size_png(finished, folder / ACCURACY_VS_SIZE_PLOT)
    return figures


# --- terminal text ---

def format_report(report: Report, show_best_config: bool = True) -> str:
    """The terminal text; without `show_best_config`, only where best_config.yaml is."""
    best = _format_best_config(report.best_config) if show_best_config else \
        f"best config: {report.experiment.directory / BEST_CONFIG_FILE}"
    sections = [_format_header(report), _format_leaderboard(report), _format_failures(report),
                _format_importances(report.importances), best, _format_plots(report.figures)]
    return "\n\n".join(section for section in sections if section)


def _format_header(report: Report) -> str:
    counts = ", ".join(f"{status} {count}" for status, count in report.status_counts.items())
    lines = [f"experiment {report.experiment.directory}: {len(report.experiment.trials)} trials ({counts})"]
    lines += [f"  note: {note}" for note in report.experiment.notes]
    return "\n".join(lines)


def _format_leaderboard(report: Report) -> str:
    if not report.leaderboard:
        return "leaderboard: no trial has a validation accuracy yet"
    params = list(report.leaderboard[0]["params"])
    headers = ["rank", "trial", "status", "best acc", "mean cls acc", "best ep", "epochs", "trainable",
               "wall s", *_short_names(params)]
    rows = [[e["rank"], e["trial_id"], e["status"], _cell(e["best_accuracy"], ".2f"),
             _cell(e["best_mean_class_accuracy"], ".2f"), _cell(e["best_epoch"]), _cell(e["epochs"]),
             _cell(e["trainable_params"], ","), _cell(e["wall_seconds"], ".0f"),
             *(_param_cell(e["params"][path]) for path in params)] for e in report.leaderboard]
    title = (f"leaderboard: top {len(rows)} of {report.ranked_count} trials with an accuracy "
             "(best validation accuracy; ties: lower best loss)")
    return title + "\n" + format_table(headers, rows)


def _format_failures(report: Report) -> str:
    if not report.failures:
        return ""
    return "failed trials\n" + "\n".join(f"  {f['trial_id']}: {f['error']}" for f in report.failures)


def _format_importances(importances: Importances) -> str:
    title = (f"parameter importances for best accuracy: {importances.evaluator}, "
             f"{importances.trials_used} finished trials")
    if importances.message:
        return f"{title}\n  {importances.message}"
    width = max(len(name) for name in importances.values) if importances.values else 0
    lines = [f"  {name.ljust(width)}  {value:.3f}  {'#' * round(value * 30)}"
             for name, value in importances.values.items()]
    lines += [f"  not ranked: {name} ({why})" for name, why in importances.not_ranked.items()]
    lines += [f"  optuna: {note}" for note in importances.notes]
    return "\n".join([title, *lines])


def _format_best_config(config: Mapping[str, Any]) -> str:
    if config["text"] is None:
        return "best config: no finished trial yet"
    body = "\n".join("  " + line for line in config["text"].rstrip().splitlines())
    return f"best config (from {config['source']})\n{body}"


def _format_plots(figures: Mapping[str, plots.PlotOutcome]) -> str:
    if not figures:
        return ""
    width = max(len(name) for name in figures)
    shown = {name: f"skipped: {o.reason}" if isinstance(o, plots.Skipped) else o for name, o in figures.items()}
    return "plots\n" + "\n".join(f"  {name.ljust(width)}  {text}" for name, text in shown.items())


def _short_names(paths: list[str]) -> list[str]:
    """Column headers: the last part of each dotted path, or the whole path where two
    parameters share that last part."""
    last = [path.rsplit(".", 1)[-1] for path in paths]
    return [short if last.count(short) == 1 else path for short, path in zip(last, paths)]


def _cell(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _param_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# --- JSON ---

def report_payload(report: Report) -> dict:
    """The report as plain data for --json."""
    return {
        "experiment_dir": str(report.experiment.directory),
        "notes": report.experiment.notes,
        "status_counts": report.status_counts,
        "trials": len(report.experiment.trials),
        "leaderboard": report.leaderboard,
        "failures": report.failures,
        "importances": asdict(report.importances),
        "best_config": report.best_config,
        "pareto_front": report.pareto,
        "plots": {name: None if isinstance(outcome, plots.Skipped) else str(outcome)
                  for name, outcome in report.figures.items()},
        "plots_skipped": {name: outcome.reason for name, outcome in report.figures.items()
                          if isinstance(outcome, plots.Skipped)},
    }


# --- shared ---

def _first_line(text: Optional[str]) -> Optional[str]:
    """The line that says what went wrong. A bare Python traceback names the exception on
    its last line, so that one is taken instead of "Traceback (most recent call last):"."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    return lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]

