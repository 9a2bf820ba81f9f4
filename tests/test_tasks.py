"""Task registry, cached preparation, task loaders and the `data` CLI."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pointpeft_ray.data.tasks import get_task, load_task_split, task_loader, task_names
from pointpeft_ray.errors import DataFormatError
from tests.test_formats import TEXT_CLASSES, write_h5, write_text_tree


def write_scanobjectnn(root, variant_folder="main_split", suffix="", n=(30, 12), points=64, seed=0):
    rng = np.random.default_rng(seed)
    for split, count in zip(("training", "test"), n):
        write_h5(root / variant_folder / f"{split}_objectdataset{suffix}.h5",
                 data=rng.uniform(-1, 1, size=(count, points, 3)).astype(np.float32),
                 label=(np.arange(count) % 15).astype(np.int64))
    return root


def test_names_and_fewshot_parsing():
    assert "synth/hardest" in task_names() and "scanobjectnn/pb_t50_rs" in task_names()
    task = get_task("modelnet40/fewshot-10w20s-7")
    assert task.options == {"way": 10, "shot": 20, "fold": 7}
    with pytest.raises(DataFormatError, match="did you mean synth/hardest"):
        get_task("synth/hardst")
    assert get_task("scanobjectnn/pb_t50_rs").num_points == 2048
    assert get_task("modelnet40").voting_views == 10


def test_real_task_is_prepared_once_then_memory_mapped(tmp_path):
    root = write_scanobjectnn(tmp_path / "scan", suffix="_augmentedrot_scale75")
    cache = tmp_path / "cache"
    first = load_task_split("scanobjectnn/pb_t50_rs", "train", root, cache, progress=False)
    assert len(first) == 30 and first.num_classes == 15 and first.name == "scanobjectnn/pb_t50_rs:train"
    assert first.source.startswith(str(cache)) and not first.points.flags.writeable
    files = list(cache.rglob("*.arrow"))
    assert len(files) == 1
    again = load_task_split("scanobjectnn/pb_t50_rs", "train", root, cache, progress=False)
    assert np.array_equal(again.points, first.points) and list(cache.rglob("*.arrow")) == files
    # the source file changes -> a new cache entry, never the stale one
    time.sleep(1.1)
    write_scanobjectnn(tmp_path / "scan", suffix="_augmentedrot_scale75", n=(31, 12), seed=1)
    changed = load_task_split("scanobjectnn/pb_t50_rs", "train", root, cache, progress=False)
    assert len(changed) == 31


def test_missing_root_and_files_are_clear_errors_and_leave_no_cache(tmp_path):
    with pytest.raises(DataFormatError, match="needs a data root"):
        load_task_split("scanobjectnn/obj_bg", "train", None, tmp_path)
    with pytest.raises(DataFormatError, match="training_objectdataset.h5"):
        load_task_split("scanobjectnn/obj_bg", "train", tmp_path / "nowhere", tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.arrow")) if (tmp_path / "cache").exists() else True


def test_modelnet40_text_tree_is_reduced_to_fps_1200(tmp_path):
    rng = np.random.default_rng(0)
    ids = {"train": ["airplane_0001", "xbox_0002"], "test": ["night_stand_0003"]}
    clouds = {i: rng.uniform(-1, 1, size=(1300, 6)) for i in sum(ids.values(), [])}
    write_text_tree(tmp_path / "mn", ids, clouds, names=TEXT_CLASSES)
    data = load_task_split("modelnet40", "train", tmp_path / "mn", tmp_path / "cache", progress=False)
    assert data.points.shape == (2, 1200, 3)
    loader = task_loader(get_task("modelnet40"), data, "test", 2)
    assert next(iter(loader)).points.shape == (2, 1024, 3)
    assert torch.equal(next(iter(loader)).points, torch.from_numpy(np.array(data.points[:, :1024])))


def test_task_loaders_follow_the_recipe(tmp_path):
    root = write_scanobjectnn(tmp_path / "scan", n=(40, 10))
    task = get_task("scanobjectnn/obj_bg")
    data = load_task_split(task, "train", root, tmp_path / "cache", progress=False)
    train = task_loader(task, data, "train", 8, seed=1)
    batch = next(iter(train))
    raw = torch.from_numpy(np.array(data.points[batch.index.numpy()]))
    assert torch.allclose(batch.points[..., 1], raw[..., 1])  # rotation about the up axis only
    assert not torch.allclose(batch.points, raw)
    assert len(train) == 5
    test = task_loader(task, data, "test", 8)
    assert sum(b.labels.numel() for b in test) == 40
    assert torch.equal(next(iter(test)).points, torch.from_numpy(np.array(data.points[:8])))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pointpeft_ray.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_data_cli_prepare_inspect_and_errors(tmp_path):
    root = write_scanobjectnn(tmp_path / "scan", variant_folder="main_split_nobg")
    cache = tmp_path / "cache"
    result = run_cli("data", "prepare", "scanobjectnn/obj_only", "--root", str(root), "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    assert "train: 30 samples x 64 points, 15 classes" in result.stdout and "cached train" in result.stdout
    png = tmp_path / "samples.png"
    result = run_cli("data", "inspect", "scanobjectnn/obj_only", "--root", str(root), "--cache-dir", str(cache),
                     "--png", str(png), "--per-class", "2")
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "toilet" in result.stdout  # per-class table
    result = run_cli("data", "prepare", "scanobjectnn/obj_bg", "--root", str(tmp_path / "missing"),
                     "--cache-dir", str(cache))
    assert result.returncode == 2 and "training_objectdataset.h5" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(list(cache.rglob("*.arrow"))) == 2


def test_synthetic_task_options_and_determinism(tmp_path):
    task = get_task("synth/objonly").with_options(samples_per_class=2, points=128, seed=3)
    a = load_task_split(task, "train", cache_dir=tmp_path, progress=False)
    assert a.points.shape == (30, 128, 3) and task.num_points == 128
    b = load_task_split(task, "train", cache_dir=tmp_path / "other", progress=False)
    assert np.array_equal(a.points, b.points)
    test = load_task_split(task, "test", cache_dir=tmp_path, progress=False)
    assert len(test) == 30 and not np.array_equal(test.points, a.points)
    with pytest.raises(DataFormatError, match=r"unknown option\(s\) \['sample'\]"):
        get_task("synth/clean").with_options(sample=3)
    with pytest.raises(DataFormatError, match="options: none"):
        get_task("scanobjectnn/obj_bg").with_options(points=3)
