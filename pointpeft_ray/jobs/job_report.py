"""A job's report: per task, the searched config vs the published settings vs full
fine-tuning (accuracy and trainable parameters), the multi-task results, and the
search's own report (leaderboard, importances, plots). Written to the job's
report/ folder as report.txt and PNGs; returned as text for the terminal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from ..atomic import atomic_write_text
from ..file_names import COMPARISON_PLOT, PLOTS_DIR, REPORT_FILE
from ..results.plots import new_figure, save_png
from ..results.search_report import build_report, format_report

if TYPE_CHECKING:
    from .spec import JobSpec

# Columns in this order; other variants (a multitask entry's name) are not compared.
VARIANT_ORDER = ("best", "base", "published", "full", "linear")


@dataclass
class JobOutcome:
    job_dir: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pretrained: Optional[str] = None
    best_trial: Optional[dict] = None  # the search's best row (trials table)
    task_rows: dict[str, list[dict]] = field(default_factory=dict)  # stage -> tasks rows
    adapter_bank: Optional[str] = None
    report_text: Optional[str] = None
    wall_seconds: float = 0.0


def write_job_report(job: "JobSpec", outcome: JobOutcome, report_dir: Path) -> str:
    report_dir.mkdir(parents=True, exist_ok=True)
    sections = [f"== job {job.name}: {', '.join(job.stage_names())} ({outcome.job_dir}) =="]
    finetune = outcome.task_rows.get("finetune")
    if finetune:
        sections.append(format_comparison(finetune))
        png = comparison_png(finetune, report_dir / COMPARISON_PLOT)
        if png is not None:
            sections.append(f"plot: {png}")
    if outcome.task_rows.get("multitask"):
        sections.append(format_tasks(outcome.task_rows["multitask"]))
    if outcome.best_trial is not None:
        search = build_report(Path(outcome.job_dir) / "tune", top=5, plots_dir=report_dir / PLOTS_DIR)
        sections.append(format_report(search, show_best_config=False))
    if outcome.adapter_bank:
        sections.append(f"adapter bank: {outcome.adapter_bank}  (pointpeft-ray predict --bank "
                        f"{outcome.adapter_bank} --task NAME POINTS.npz)")
    text = "\n\n".join(sections)
    atomic_write_text(report_dir / REPORT_FILE, text + "\n")
    return text


def comparison_rows(rows: Sequence[Mapping]) -> dict[str, dict[str, Mapping]]:
    """task name -> variant -> its row (fine-tune stage rows)."""
    table: dict[str, dict[str, Mapping]] = {}
    for row in rows:
        table.setdefault(row["task_name"], {})[row.get("variant") or row["task"]] = row
    return table


def format_comparison(rows: Sequence[Mapping]) -> str:
    """Accuracy (trainable parameters) per task and variant, and the chosen config minus
    each baseline."""
    table = comparison_rows(rows)
    variants = [v for v in VARIANT_ORDER if any(v in by_variant for by_variant in table.values())]
    width = max(len(task) for task in table) + 2
    lines = ["fine-tune: best accuracy % (trainable parameters)",
             "".ljust(width) + "".join(v.rjust(22) for v in variants)]
    for task, by_variant in sorted(table.items()):
        lines.append(task.ljust(width) + "".join(_cell(by_variant.get(v)).rjust(22) for v in variants))
    chosen = next((v for v in ("best", "base") if v in variants), None)
    for baseline in (v for v in variants if v != chosen and chosen):
        deltas = [_accuracy(by_variant.get(chosen)) - _accuracy(by_variant.get(baseline))
                  for by_variant in table.values()
                  if _accuracy(by_variant.get(chosen)) is not None and _accuracy(by_variant.get(baseline)) is not None]
        if deltas:
            mean = sum(deltas) / len(deltas)
            lines.append(f"{chosen} - {baseline}: {mean:+.2f} points on average over {len(deltas)} task(s)")
    return "\n".join(lines)


def format_tasks(rows: Sequence[Mapping]) -> str:
    lines = ["multi-task: best accuracy % (trainable parameters), node"]
    width = max(len(row["task"]) for row in rows) + 2
    for row in sorted(rows, key=lambda r: r["task"]):
        where = (row.get("node") or "")[:12]
        lines.append(f"{row['task'].ljust(width)}{row['task_name']:<18}{_cell(row):>22}  {where}")
    return "\n".join(lines)


def comparison_png(rows: Sequence[Mapping], path: Path) -> Optional[Path]:
    """Grouped bars: accuracy per task, one bar per variant."""
    table = comparison_rows(rows)
    variants = [v for v in VARIANT_ORDER if any(_accuracy(t.get(v)) is not None for t in table.values())]
    if not variants:
        return None
    tasks = sorted(table)
    figure = new_figure(max(5.0, 1.6 * len(tasks)), 3.6)
    axes = figure.add_subplot()
    width = 0.8 / len(variants)
    for index, variant in enumerate(variants):
        heights = [_accuracy(table[task].get(variant)) or 0.0 for task in tasks]
        axes.bar([t + index * width for t in range(len(tasks))], heights, width, label=variant)
    axes.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
    axes.set_ylabel("best accuracy (%)")
    axes.legend(fontsize=8)
    return save_png(figure, path)


def _accuracy(row: Optional[Mapping]) -> Optional[float]:
    if row is None or row.get("status") != "completed":
        return None
    return row.get("best_accuracy")


def _cell(row: Optional[Mapping]) -> str:
    if row is None:
        return "-"
    if row.get("status") != "completed":
        return "failed"
    return f"{row['best_accuracy']:.1f} ({_count(row.get('trainable_params'))})"


def _count(value: Optional[int]) -> str:
    if value is None:
        return "?"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"
