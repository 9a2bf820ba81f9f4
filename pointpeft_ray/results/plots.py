"""The report's pictures, as PNG files: learning curves of the top trials, accuracy against
each searched parameter, and accuracy against trainable parameters with the Pareto front.

Figures are built on matplotlib's object API (Figure, no pyplot), so no global backend or
figure registry is touched; PNG output goes through the Agg renderer. A figure that lacks
its data is skipped with the reason instead (`Skipped`), so a running search still reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from ..atomic import atomic_file
from .tables import param_column

MAX_CURVES = 10          # more lines than this make a legend unreadable
PANELS_PER_ROW = 3
POINT_COLOUR = "tab:blue"


@dataclass(frozen=True)
class Skipped:
    reason: str


PlotOutcome = Union[Path, Skipped]


# --- (1) learning curves ---

def learning_curves_png(curves: Mapping[str, Sequence[Mapping[str, Any]]], trial_ids: Sequence[str],
                        path: Path) -> PlotOutcome:
    """Validation accuracy per epoch of `trial_ids` (best first); `curves`: trial id ->
    its epoch rows."""
    series = {}
    for trial_id in list(trial_ids)[:MAX_CURVES]:
        points = [(row["epoch"], row["val_accuracy"]) for row in curves.get(trial_id, ())
                  if row.get("val_accuracy") is not None]
        if points:
            series[trial_id] = points
    if not series:
        return Skipped("no evaluated epochs (val_accuracy) for the top trials")
    figure = new_figure(7.0, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    for trial_id, points in series.items():
        epochs, accuracies = zip(*points)
        axes.plot(epochs, accuracies, marker="o", markersize=3, linewidth=1.2, label=trial_id)
    axes.set(xlabel="epoch", ylabel="validation accuracy (%)",
             title=f"learning curves of the top {len(series)} trials")
    _integer_ticks(axes.xaxis)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    return save_png(figure, path)


# --- (2) accuracy against each searched parameter ---

def accuracy_vs_params_png(rows: Sequence[Mapping[str, Any]], parameters: Mapping[str, Mapping],
                           path: Path, metric: str = "best_accuracy") -> PlotOutcome:
    """One panel per searched parameter: a scatter for numbers (log axis where the space
    samples on a log scale), a box with its points for categories. `rows`: finished trials;
    `parameters`: dotted path -> spec (from the stored search space)."""
    rows = [row for row in rows if row.get(metric) is not None]
    panels = {path_: spec for path_, spec in parameters.items()
              if any(row.get(param_column(path_)) is not None for row in rows)}
    if not rows:
        return Skipped("no finished trial with an accuracy yet")
    if not panels:
        return Skipped("no searched parameter has a value in the finished trials")
    columns = min(PANELS_PER_ROW, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = new_figure(3.4 * columns, 2.9 * lines)
    first = None  # one accuracy scale for every panel, so panels compare at a glance
    for index, (name, spec) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(lines, columns, index, sharey=first)
        first = first or axes
        pairs = [(row[param_column(name)], row[metric]) for row in rows if row.get(param_column(name)) is not None]
        if spec.get("type") == "categorical" or isinstance(pairs[0][0], (bool, str)):
            _category_panel(axes, pairs)
        else:
            _numeric_panel(axes, pairs, log=bool(spec.get("log")))
        axes.set_title(name, fontsize=9)
        axes.set_ylabel("best accuracy (%)" if (index - 1) % columns == 0 else "", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    figure.suptitle(f"best accuracy against each searched parameter ({len(rows)} finished trials)", fontsize=10)
    return save_png(figure, path)


def _numeric_panel(axes, pairs, log: bool) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    values, accuracies = zip(*pairs)
    axes.scatter(values, accuracies, s=18, alpha=0.8, color=POINT_COLOUR)
    if log and min(values) > 0:
        # Searched log ranges often span less than a decade: label 1-2-5 steps plainly
        # (2e-04, 5e-04, 0.001) instead of crowded minor labels.
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    elif all(isinstance(value, int) for value in values):
        _integer_ticks(axes.xaxis)


def _category_panel(axes, pairs) -> None:
    """Box per category with the trials drawn over it, spread sideways so equal
    accuracies stay visible."""
    categories = list(dict.fromkeys(str(value) for value, _ in pairs))
    groups = [[accuracy for value, accuracy in pairs if str(value) == category] for category in categories]
    axes.boxplot(groups, widths=0.5, showfliers=False)
    for position, group in enumerate(groups, start=1):
        spread = [position + 0.25 * ((i % 5) - 2) / 2 for i in range(len(group))]
        axes.scatter(spread, group, s=14, alpha=0.8, zorder=3, color=POINT_COLOUR)
    axes.set_xticks(range(1, len(categories) + 1), categories)


# --- (3) accuracy against size, with the Pareto front ---

def pareto_front(points: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The (params, accuracy, label) points no other point beats on both counts (fewer or
    equal trainable parameters and higher or equal accuracy, one of them strictly),
    ordered by size."""
    ordered = sorted(points, key=lambda p: (p[0], -p[1]))
    front, best = [], -math.inf
    for point in ordered:
        if point[1] > best:  # smaller models come first, so only a gain in accuracy earns a place
            front.append(point)
            best = point[1]
    return front


def accuracy_vs_size_png(rows: Sequence[Mapping[str, Any]], path: Path,
                         metric: str = "best_accuracy") -> PlotOutcome:
    """Best accuracy against trainable parameters of the finished trials, the Pareto
    front (max accuracy, min parameters) highlighted."""
    points = [(row["trainable_params"], row[metric], row["trial_id"]) for row in rows
              if row.get("trainable_params") is not None and row.get(metric) is not None]
    if not points:
        return Skipped("no finished trial records both trainable_params and an accuracy")
    front = pareto_front(points)
    figure = new_figure(6.5, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    sizes, accuracies, _ = zip(*points)
    axes.scatter(sizes, accuracies, s=20, color="0.6", label="trial")
    front_sizes, front_accuracies, front_ids = zip(*front)
    axes.step(front_sizes, front_accuracies, where="post", color="tab:red", linewidth=1.2)
    axes.scatter(front_sizes, front_accuracies, s=40, color="tab:red", zorder=3, label="Pareto front")
    for size, accuracy, trial_id in front:
        axes.annotate(trial_id, (size, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if min(sizes) > 0 and max(sizes) / min(sizes) > 20:
        axes.set_xscale("log")
    else:
        from matplotlib.ticker import FuncFormatter

        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.set(xlabel="trainable parameters", ylabel="best accuracy (%)",
             title="accuracy against trainable parameters")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return save_png(figure, path)


# --- shared ---

def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_png(figure, path: Path, dpi: int = 100) -> Path:
    with atomic_file(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
