"""What `pointpeft-ray data inspect` shows: counts per split and class, points per
sample, and a PNG of a few samples of every class."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from .split import PointSplit


def summarise(splits: dict[str, PointSplit]) -> dict:
    return {
        name: {
            "samples": len(data),
            "points_per_sample": data.points_per_sample,
            "classes": data.num_classes,
            "per_class": data.class_counts(),
            "max_abs_coordinate": float(np.abs(data.points).max()),
            "source": data.source,
        }
        for name, data in splits.items()
    }


def format_summary(task: str, summary: dict) -> str:
    lines = [f"task {task}"]
    names = list(summary)
    for name in names:
        s = summary[name]
        lines.append(f"  {name}: {s['samples']} samples x {s['points_per_sample']} points, "
                     f"{s['classes']} classes, |coord| <= {s['max_abs_coordinate']:.3f}  ({s['source']})")
    classes = list(summary[names[0]]["per_class"])
    width = max(len(c) for c in classes)
    lines.append("  " + "class".ljust(width) + "".join(f"  {n:>7}" for n in names))
    for cls in classes:
        lines.append("  " + cls.ljust(width) + "".join(f"  {summary[n]['per_class'].get(cls, 0):>7}" for n in names))
    return "\n".join(lines)


def render_samples_png(data: PointSplit, path: str | Path, per_class: int = 3, seed: int = 0) -> Path:
    """A grid: one row per class, `per_class` random samples each, three-quarter view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    rows = data.num_classes
    fig = plt.figure(figsize=(2.2 * per_class, 2.0 * rows))
    mask = data.extras.get("mask")
    for row, name in enumerate(data.class_names):
        members = np.flatnonzero(data.labels == row)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for col, sample in enumerate(picks):
            ax = fig.add_subplot(rows, per_class, row * per_class + col + 1, projection="3d")
            pts = data.points[sample]
            colour = np.where(mask[sample] > 0, 0.2, 0.8) if mask is not None else pts[:, 1]
            # y is up in these datasets: plot it on matplotlib's vertical axis
            ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], c=colour, s=0.6, cmap="viridis", linewidths=0)
            ax.set_axis_off()
            ax.view_init(elev=20, azim=-60)
            if col == 0:
                ax.set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)
