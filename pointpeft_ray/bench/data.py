"""`pointpeft-ray bench data`: samples/s of read (memory-mapped Arrow cache) +
augment + collate, the work the loader does for every training batch."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data.cache import read_split, write_split
from ..data.loader import BatchLoader
from ..data.split import PointSplit
from ..data.transforms import build_augmentation
from ..output import format_table
from .common import machine_info, save_figures

CASES = (
    # (label, stored points, points fed, augmentation)
    ("1024 pts, scale+translate", 1024, 1024, "scale_translate"),
    ("1024 of 1200 (ModelNet recipe)", 1200, 1024, "scale_translate"),
    ("2048 pts, rotate", 2048, 2048, "rotate"),
    # the published ScanObjectNN recipe: shuffle, anisotropic scale, one rotation per batch
    ("2048 pts, published ScanObjectNN", 2048, 2048, "published_scanobjectnn"),
)


def run_bench(samples: int = 8192, batch_size: int = 32, epochs: int = 3, json_path: str | None = None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pointpeft-bench-data-") as tmp:
        for label, stored, fed, augment in CASES:
            path = _write_random_split(Path(tmp) / f"{stored}.arrow", samples, stored)
            rows.append(_measure(label, path, fed, augment, batch_size, epochs))
    payload = {"benchmark": "data", "machine": machine_info("cpu"), "samples": samples,
               "batch_size": batch_size, "epochs": epochs, "cases": rows}
    table = format_table(["case", "points", "batches", "samples/s"],
                         [(r["case"], r["points"], r["batches"], r["samples_per_second"]) for r in rows])
    print(f"data bench: {samples} samples, batch {batch_size}, {epochs} epochs, torch threads {torch.get_num_threads()}")
    print(table)
    print("goals: >= 20,000 samples/s at 1024 points; >= 5,000 at 2048 (one GPU's step at batch 256)")
    return save_figures(payload, json_path)


def _write_random_split(path: Path, samples: int, points: int) -> Path:
    rng = np.random.default_rng(0)
    clouds = rng.uniform(-1, 1, size=(samples, points, 3)).astype(np.float32)
    labels = rng.integers(0, 15, size=samples)
    write_split(PointSplit(clouds, labels, [f"c{i}" for i in range(15)], name="bench"), path, {"bench": points})
    return path


def _measure(label: str, path: Path, fed: int, augment: str, batch_size: int, epochs: int) -> dict:
    data = read_split(path)  # memory-mapped, as training reads it
    loader = BatchLoader(data, batch_size, shuffle=True, drop_last=True, num_points=fed,
                         augment=build_augmentation(augment))
    seen, batches = 0, 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            seen += batch.points.shape[0]
            batches += 1
    seconds = time.perf_counter() - start
    return {"case": label, "points": fed, "batches": batches, "seconds": seconds,
            "samples_per_second": seen / seconds}
