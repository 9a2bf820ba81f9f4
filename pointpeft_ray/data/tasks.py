"""Task registry: a task name gives its splits, classes, points and recipe.

Names: `synth/{clean,objonly,objbg,hardest}`, `scanobjectnn/{obj_bg,obj_only,pb_t50_rs}`,
`modelnet40` (text tree, or the pickled 8192-point cache with allow_pickle),
`modelnet40/h5`, `modelnet40/fewshot-{way}w{shot}s-{fold}`, `shapenet55`.
Splits are prepared once into the Arrow cache (keyed by the task, its options,
the loader versions and the source files' sizes and times) and memory-mapped after.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError
from ..models.ops import farthest_point_sample, gather_points
from ..progress import progress_bar
from . import synthetic
from .cache import cache_path, default_cache_dir, load_or_build
from .formats import (read_fewshot, read_modelnet40_dat, read_modelnet40_h5, read_modelnet40_text, read_scanobjectnn,
                      read_shapenet55)
from .formats.scanobjectnn import VARIANT_FILES, scanobjectnn_path
from .loader import BatchLoader
from .split import PointSplit
from .transforms import build_augmentation, build_augmentation_for

LOADER_VERSION = 1
USER_OPTIONS = {"synthetic": ("samples_per_class", "points", "seed")}


@dataclass(frozen=True)
class Task:
    name: str
    family: str  # synthetic | scanobjectnn | modelnet40 | modelnet40_h5 | fewshot | shapenet55
    num_points: int  # points per cloud fed to the model
    cache_points: int | None = None  # FPS-reduce (ordered) to this many when preparing
    train_augment: str = "scale_translate"
    voting_views: int = 1
    needs_root: bool = True
    options: dict = field(default_factory=dict)
    splits: tuple = ("train", "test")

    def with_options(self, **options) -> "Task":
        """User options (synthetic tasks: samples_per_class, points, seed)."""
        if not options:
            return self
        allowed = USER_OPTIONS.get(self.family, ())
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise DataFormatError(f"task {self.name}: unknown option(s) {unknown}; options: {', '.join(allowed) or 'none'}")
        points = int(options.get("points", self.num_points))
        return replace(self, options={**self.options, **options}, num_points=points)


def _synthetic(variant: str) -> Task:
    # Partial-view variants are ScanObjectNN-like (rotation augmentation);
    # the clean one is ModelNet-like (scale + translate, voting).
    augment = "scale_translate" if variant == "clean" else "rotate"
    return Task(f"synth/{variant}", "synthetic", num_points=1024, train_augment=augment,
                needs_root=False, options={"variant": variant})


_FIXED: dict[str, Task] = {
    **{f"synth/{v}": _synthetic(v) for v in ("clean", "objonly", "objbg", "hardest")},
    **{
        f"scanobjectnn/{v}": Task(f"scanobjectnn/{v}", "scanobjectnn", num_points=2048,
                                  train_augment="rotate", options={"variant": v})
        for v in VARIANT_FILES
    },
    # Published ModelNet40 recipe: FPS 1200 of 8192 once, then a random 1024
    # for training; the first 1024 (= FPS 1024) for testing; voting over 10 views.
    "modelnet40": Task("modelnet40", "modelnet40", num_points=1024, cache_points=1200, voting_views=10),
    "modelnet40/h5": Task("modelnet40/h5", "modelnet40_h5", num_points=1024, voting_views=10),
    "shapenet55": Task("shapenet55", "shapenet55", num_points=1024, cache_points=1024, train_augment="none"),
}
_FEWSHOT = re.compile(r"^modelnet40/fewshot-(\d+)w(\d+)s-(\d+)$")


def task_names() -> list[str]:
    return [*_FIXED, "modelnet40/fewshot-{way}w{shot}s-{fold}"]


def get_task(name: str) -> Task:
    if name in _FIXED:
        return _FIXED[name]
    match = _FEWSHOT.match(name)
    if match:
        way, shot, fold = (int(g) for g in match.groups())
        return Task(name, "fewshot", num_points=1024, cache_points=1024,
                    options={"way": way, "shot": shot, "fold": fold})
    near = difflib.get_close_matches(name, list(_FIXED), n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    raise DataFormatError(f"unknown task {name!r}{hint}; known tasks: {', '.join(task_names())}")


def load_task_split(
    task: Task | str,
    split: str,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
) -> PointSplit:
    """The prepared split of a task, from the Arrow cache or built into it first."""
    task = get_task(task) if isinstance(task, str) else task
    if split not in task.splits:
        raise DataFormatError(f"{task.name}: unknown split {split!r}; splits: {', '.join(task.splits)}")
    if task.needs_root and root is None:
        raise DataFormatError(f"{task.name}: needs a data root (the folder holding the downloaded dataset)")
    root = Path(root).expanduser() if root is not None else None
    key = _cache_key(task, split, root, allow_pickle)
    path = cache_path(cache_dir or default_cache_dir(), task.name, split, key)
    result, _ = load_or_build(path, key, lambda: _prepare(task, split, root, allow_pickle, progress))
    return result


def task_loader(task: Task, data: PointSplit, split: str, batch_size: int, *, seed: int = 0,
                rank: int = 0, world_size: int = 1, augment: str | None = None, recipe: str = "ours",
                all_points: bool = False) -> BatchLoader:
    """The loader a task's recipe asks for: training shuffles, subsamples at random
    and augments (`augment` as named, else the task's augmentation as `recipe` does
    it); evaluation reads the first `num_points` (FPS order where cached so), or
    every point with `all_points` (published voting draws its own subsets)."""
    num_points = task.num_points if data.points_per_sample > task.num_points else None
    if split == "train":
        transform = build_augmentation(augment) if augment else build_augmentation_for(task.train_augment, recipe)
        return BatchLoader(data, batch_size, shuffle=True, drop_last=True, seed=seed, num_points=num_points,
                           subsample="random", augment=transform, rank=rank, world_size=world_size)
    return BatchLoader(data, batch_size, num_points=None if all_points else num_points, subsample="first",
                       rank=rank, world_size=world_size, pad_shards=False)


def _cache_key(task: Task, split: str, root: Path | None, allow_pickle: bool) -> dict:
    key = {"task": task.name, "split": split, "loader": LOADER_VERSION, "options": task.options,
           "cache_points": task.cache_points}
    if task.family == "synthetic":
        key["generator"] = synthetic.GENERATOR_VERSION
    else:
        key["root"] = str(root.resolve())
        key["files"] = [_stat(p) for p in _source_files(task, split, root, allow_pickle)]
    return key


def _stat(path: Path) -> list:
    try:
        info = path.stat()
        return [str(path), info.st_size, int(info.st_mtime)]
    except OSError:
        return [str(path), None, None]


def _source_files(task: Task, split: str, root: Path, allow_pickle: bool) -> list[Path]:
    """The files whose change must invalidate the cache (index files for trees)."""
    if task.family == "scanobjectnn":
        return [scanobjectnn_path(root, task.options["variant"], split)]
    if task.family == "modelnet40":
        base = root / "modelnet40_normal_resampled"
        return [_modelnet_dat(root, split) if _use_dat(root, split, allow_pickle) else base / f"modelnet40_{split}.txt"]
    if task.family == "modelnet40_h5":
        return sorted((root / "modelnet40_ply_hdf5_2048").glob(f"ply_data_{split}*.h5"))
    if task.family == "fewshot":
        o = task.options
        return [root / f"{o['way']}way_{o['shot']}shot" / f"{o['fold']}.pkl"]
    if task.family == "shapenet55":
        return [root / "ShapeNet-55" / f"{split}.txt"]
    return []


def _modelnet_dat(root: Path, split: str) -> Path:
    return root / "modelnet40_normal_resampled" / f"modelnet40_{split}_8192pts_fps.dat"


def _use_dat(root: Path, split: str, allow_pickle: bool) -> bool:
    return allow_pickle and _modelnet_dat(root, split).is_file()


def _prepare(task: Task, split: str, root: Path | None, allow_pickle: bool, progress: bool) -> PointSplit:
    data = _read(task, split, root, allow_pickle, progress)
    if task.cache_points is not None and data.points_per_sample > task.cache_points:
        data = fps_reduce(data, task.cache_points, progress)
    return replace(data, name=f"{task.name}:{split}", check=False)


def fps_reduce(data: PointSplit, count: int, progress: bool = True, chunk: int = 256) -> PointSplit:
    """Reduce every cloud to `count` points by FPS, keeping the FPS order (so any
    prefix of the result is itself the FPS of that length)."""
    parts = []
    starts = range(0, len(data), chunk)
    for start in progress_bar(starts, progress, desc=f"fps {data.points_per_sample}->{count}", unit="chunk",
                              leave=False):
        clouds = torch.from_numpy(np.ascontiguousarray(data.points[start:start + chunk]))
        idx = farthest_point_sample(clouds, count)  # the published GPU op's rules
        parts.append(gather_points(clouds, idx).numpy())
    return replace(data, points=np.concatenate(parts), check=False)


def _read(task: Task, split: str, root: Path | None, allow_pickle: bool, progress: bool) -> PointSplit:
    o = task.options
    if task.family == "synthetic":
        return synthetic.make_split(o["variant"], split,
                                    samples_per_class=o.get("samples_per_class", synthetic.DEFAULT_SAMPLES[split]),
                                    num_points=o.get("points", task.num_points), seed=o.get("seed", 0),
                                    progress=progress)
    if task.family == "scanobjectnn":
        return read_scanobjectnn(root, o["variant"], split)
    if task.family == "modelnet40":
        if _use_dat(root, split, allow_pickle):
            return read_modelnet40_dat(_modelnet_dat(root, split), allow_pickle=True)
        # FPS is greedy, so FPS to 1200 equals the first 1200 of FPS to 8192:
        # reading straight to cache_points skips 85% of the sequential work.
        return read_modelnet40_text(root, split, num_points=task.cache_points or 8192, progress=progress)
    if task.family == "modelnet40_h5":
        return read_modelnet40_h5(root, split)
    if task.family == "fewshot":
        return read_fewshot(root, o["way"], o["shot"], o["fold"], split, allow_pickle=allow_pickle)
    return read_shapenet55(root, split)
