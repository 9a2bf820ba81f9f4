"""A search's record is never lost silently: a damaged table stops a resume and is left as it
is, `repair` rebuilds it from Ray Tune's trial folders, a rerun without --resume refuses to
merge into an existing search, and names cannot leave their storage folder."""
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pointpeft_ray.configuration import check_name, name_from_path
from pointpeft_ray.distributed.train import RayRunSettings
from pointpeft_ray.distributed.tune import SearchSettings, run_search
from pointpeft_ray.errors import ConfigError, DamagedRecordError
from pointpeft_ray.file_names import WRITER_LOCK_FILE
from tests.conftest import logged
from tests.test_tune import _base, _space


@pytest.fixture(scope="module")
def finished_search(local_ray, tmp_path_factory):
    """One finished 3-trial search (one trial fails by design), copied per test."""
    tmp = tmp_path_factory.mktemp("search")
    settings = SearchSettings(samples=3, name="search", storage_path=str(tmp / "runs"), seed=1, max_failures=0,
                              asha=False)
    with logged() as lines:
        outcome = run_search(_base(tmp), _space(tmp), settings)
    # live progress: a line per ended trial, the last one with every trial counted
    assert [line for line in lines if line.startswith("[tune] 3/3 trials done (2 completed, 1 failed)")], lines
    folder = Path(outcome.experiment_dir)
    return tmp, folder, pd.read_parquet(folder / "trials.parquet"), pd.read_parquet(folder / "epochs.parquet")


def _copy(finished, tmp_path):
    source_tmp, folder, trials, epochs = finished
    storage = tmp_path / "runs"
    shutil.copytree(folder, storage / "search")
    settings = SearchSettings(samples=3, name="search", storage_path=str(storage), seed=1, max_failures=0, asha=False)
    return settings, storage / "search", _base(source_tmp), _space(source_tmp), trials, epochs


def _sorted(frame, keys):
    return frame.sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize("damaged", ["trials.parquet", "epochs.parquet"])
def test_a_damaged_table_stops_the_resume_and_repair_rebuilds_it(finished_search, tmp_path, damaged):
    settings, folder, base, space, trials, epochs = _copy(finished_search, tmp_path)
    table = folder / damaged
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])  # truncated mid-write
    before = {p.name: p.read_bytes() for p in folder.glob("*.parquet")}

    with pytest.raises(DamagedRecordError, match=rf"{damaged}.*left as it is.*--repair"):
        run_search(base, space, settings, resume=True)
    assert {p.name: p.read_bytes() for p in folder.glob("*.parquet")} == before  # nothing rewritten

    with logged() as messages:
        outcome = run_search(base, space, settings, repair=True)
    assert any(m.startswith("[repair] 3 trials") for m in messages), messages
    kept = list(folder.glob(f"{damaged}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before[damaged]  # the damaged file is kept
    rebuilt_trials = pd.read_parquet(folder / "trials.parquet")  # an independent reader
    rebuilt_epochs = pd.read_parquet(folder / "epochs.parquet")
    assert outcome.trials == 3
    columns = ["trial_id", "status", "epochs", "best_accuracy", "param.optim.lr", "param.peft.prompt_length"]
    pd.testing.assert_frame_equal(_sorted(rebuilt_trials[columns], ["trial_id"]), _sorted(trials[columns], ["trial_id"]))
    epoch_columns = ["trial_id", "epoch", "val_accuracy", "train_loss"]
    pd.testing.assert_frame_equal(_sorted(rebuilt_epochs[epoch_columns], ["trial_id", "epoch"]),
                                  _sorted(epochs[epoch_columns], ["trial_id", "epoch"]))
    failed = rebuilt_trials[rebuilt_trials.status == "failed"]
    assert len(failed) == 1 and failed.error.str.contains("top_k").all()

    # after the repair the search resumes (finished: nothing runs again) and keeps every row
    again = run_search(base, space, settings, resume=True)
    assert again.trials == 3 and len(pd.read_parquet(folder / "epochs.parquet")) == len(epochs)


def test_a_rerun_without_resume_refuses_to_merge_into_an_existing_search(finished_search, tmp_path):
    settings, folder, base, space, _, _ = _copy(finished_search, tmp_path)
    def results():  # every file but the writer lock's note of who last held the folder
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != WRITER_LOCK_FILE}
    before = results()
    with pytest.raises(ConfigError, match="already holds a search named 'search': continue it with --resume"):
        run_search(base, space, settings)
    assert results() == before


@pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "a/b", "..", ".hidden", "", "x" * 101, "sp ace"])
def test_names_that_would_leave_the_storage_folder_are_refused(name):
    with pytest.raises(ConfigError, match="becomes a folder under the storage path"):
        check_name(name)
    with pytest.raises(ConfigError, match="run name"):
        RayRunSettings(name=name)
    with pytest.raises(ConfigError, match="search name"):
        SearchSettings(name=name)


def test_counts_below_one_are_refused_by_flag():
    with pytest.raises(ConfigError, match="--workers: expected at least 1, got 0"):
        RayRunSettings(workers=0)
    with pytest.raises(ConfigError, match="--workers-per-trial: expected at least 1, got 0"):
        SearchSettings(workers_per_trial=0)
    with pytest.raises(ConfigError, match="--samples: expected at least 1, got -2"):
        SearchSettings(samples=-2)


def test_default_names_from_file_stems_are_made_safe():
    assert name_from_path("configs/my config (v2).yaml") == "my-config-v2-"
    assert name_from_path("..yaml") == "run"
    check_name(name_from_path("configs/my config (v2).yaml"))


@pytest.mark.parametrize("command", ["train", "tune", "pretrain"])
def test_the_name_flag_is_checked_before_any_work(tmp_path, command):
    config = Path(__file__).resolve().parent.parent / "configs" / "synth_small_peft.yaml"
    if command == "pretrain":
        config = config.with_name("pretrain_synth_small.yaml")
    extra = ["--space", "search_spaces/cpu_demo.yaml"] if command == "tune" else []
    run = subprocess.run([sys.executable, "-m", "pointpeft_ray.cli", command, str(config), *extra,
                          "--name", "../../escaped", "--storage", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 2, run.stderr
    assert "--name '../../escaped'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()


def test_a_storage_path_that_is_a_file_is_named_before_ray_starts(tmp_path):
    occupied = tmp_path / "runs"
    occupied.write_text("not a folder")
    for path in (occupied, occupied / "deeper"):
        with pytest.raises(ConfigError, match=r"--storage .*: not a folder"):
            RayRunSettings(storage_path=str(path))
        with pytest.raises(ConfigError, match=r"--storage .*: not a folder"):
            SearchSettings(storage_path=str(path))
    RayRunSettings(storage_path=str(tmp_path / "new" / "folder"))  # missing folders are created later
    SearchSettings(storage_path="s3://bucket/runs")  # URIs are the filesystem's to check
