"""Faults, injected for real: a writer killed with SIGKILL between writing a temporary and
renaming it (tables, checkpoints, the adapter bank), a full disk (/dev/full), two
processes writing one folder, and a Tune trial process killed mid-search. Each test
checks what is kept and that the next run carries on from it (docs/guide.md, "Faults
and what is kept")."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from pointpeft_ray.atomic import _temp_name
from pointpeft_ray.engine.context import load_state
from pointpeft_ray.errors import WriteError
from pointpeft_ray.folder_lock import FolderInUseError, exclusive_folder
from pointpeft_ray.results.storage import write_table_atomic
from pointpeft_ray.results.tables import read_trials, trials_table
from pointpeft_ray.search.space import SearchSpace
from tests.test_results_tables import CPU_DEMO, records

ROOT = Path(__file__).resolve().parent.parent

# Prepended to a child's code: os.replace SIGKILLs the process instead of renaming, the
# (SKIP+1)-th time its source (WHICH=from) or destination (WHICH=into) is named NAME.
KILL_AT_RENAME = """
import os, signal
from pathlib import Path
_real_replace, _left = os.replace, {skip}
def _replace(src, dst, *args, **kwargs):
    global _left
    if Path({which}).name == {name!r}:
        if _left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        _left -= 1
    return _real_replace(src, dst, *args, **kwargs)
os.replace = _replace
"""


def run_killed(code: str, name: str, which: str = "into", skip: int = 0) -> subprocess.CompletedProcess:
    prelude = KILL_AT_RENAME.format(name=name, which="src" if which == "from" else "dst", skip=skip)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


# --- killed between the temporary and the rename ---


def test_a_table_write_killed_before_its_rename_keeps_the_previous_table(tmp_path):
    path = tmp_path / "trials.parquet"
    child = run_killed(f"""
from pointpeft_ray.results.storage import write_table_atomic
from pointpeft_ray.results.tables import trials_table
from pointpeft_ray.search.space import SearchSpace
from tests.test_results_tables import CPU_DEMO, records
space = SearchSpace.from_yaml(CPU_DEMO)
write_table_atomic(trials_table(records()[:1], space), {str(path)!r})
write_table_atomic(trials_table(records(), space), {str(path)!r})
""", "trials.parquet", skip=1)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert pq.read_table(path).num_rows == 1  # an independent reader: the first version, whole
    assert read_trials(path).num_rows == 1
    killed_temp = leftovers(tmp_path, "trials.parquet")
    assert len(killed_temp) == 1 and pq.read_table(tmp_path / killed_temp[0]).num_rows == 3
    # a truncated temporary of another dead writer, as a crash during the write leaves it
    truncated = tmp_path / f"{killed_temp[0].rsplit('-', 2)[0]}-999999999-1.tmp"
    truncated.write_bytes(b"PAR1 half")

    space = SearchSpace.from_yaml(CPU_DEMO)
    write_table_atomic(trials_table(records()[:2], space), path)  # the next run's write
    assert pq.read_table(path).num_rows == 2
    assert leftovers(tmp_path, "trials.parquet") == []  # the dead writers' temporaries are gone


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    path = tmp_path / "trials.parquet"
    # another thread of this (live) process writing the same table
    live = _temp_name(path).with_name(f"{_temp_name(path).name.rsplit('-', 1)[0]}-12345.tmp")
    live.write_bytes(b"being written")
    write_table_atomic(trials_table(records(), SearchSpace.from_yaml(CPU_DEMO)), path)
    assert live.read_bytes() == b"being written" and read_trials(path).num_rows == 3


def _tiny_train_yaml(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "mode": "peft", "model": {"preset": "tiny"},
        "data": {"task": "synth/clean", "cache_dir": str(tmp_path / "cache"),
                 "options": {"samples_per_class": 4, "points": 256}},
        "optim": {"epochs": epochs, "warmup_epochs": 1, "batch_size": 15},
    }))
    return path


@pytest.mark.parametrize("where", ["before the old checkpoint is moved aside", "between the two renames"])
def test_a_run_killed_while_replacing_its_checkpoint_resumes_from_the_previous_one(tmp_path, where):
    """Replacing last/ takes two renames (last -> .old, staging -> last). A kill before
    the first leaves last/ as it was; a kill between them leaves no last/ at all, and
    the rerun puts the previous one back before resuming from it."""
    config = _tiny_train_yaml(tmp_path, epochs=3)
    argv = ["train", str(config), "--in-process", "--storage", str(tmp_path / "runs"), "--name", "killed"]
    run_dir = tmp_path / "runs" / "killed"
    code = f"import sys\nfrom pointpeft_ray.cli import main\nsys.exit(main({argv!r}))\n"
    if where == "between the two renames":
        child = run_killed(code, "last", which="into", skip=1)  # epoch 1's rename passes
    else:
        child = run_killed(code, "last", which="from")  # epoch 2 moving epoch 1's aside
    assert child.returncode == -signal.SIGKILL, child.stderr
    # killed while writing epoch 2's checkpoint, which comes before its console line
    assert "epoch   1 " in child.stdout and "epoch   2 " not in child.stdout
    if where == "between the two renames":
        assert not (run_dir / "last").exists()
        assert any(name.endswith(".old") for name in leftovers(run_dir, "last"))
    else:
        assert load_state(run_dir / "last" / "run_state.pt")["epochs_done"] == 1
        assert leftovers(run_dir, "last")  # epoch 2's staged checkpoint, never renamed

    done = subprocess.run([sys.executable, "-m", "pointpeft_ray.cli", *argv, "--json", str(tmp_path / "s.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "[resume] from epoch 1" in done.stdout  # epoch 1 kept; epoch 2 (never recorded) trained again
    state = load_state(run_dir / "last" / "run_state.pt")
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert json.loads((tmp_path / "s.json").read_text())["epochs"] == 3
    assert leftovers(run_dir, "last") == []


def test_an_adapter_bank_update_killed_before_its_index_is_renamed_keeps_the_bank(tmp_path):
    from pointpeft_ray.engine.config import TrainConfig
    from pointpeft_ray.engine.loop import train
    from pointpeft_ray.serving.adapter_bank import BankEntry, read_bank_index, write_adapter_bank

    config = TrainConfig.from_yaml(_tiny_train_yaml(tmp_path, epochs=1))
    for name in ("a", "b"):
        train(config.replace(run_dir=str(tmp_path / name)))
    bank = tmp_path / "bank"
    entry = "BankEntry({name!r}, {adapter!r}, {config!r}, 50.0)"
    entries = {name: entry.format(name=name, adapter=str(tmp_path / name / "best" / "adapter"),
                                  config=config.model_dump_json()) for name in ("a", "b")}
    child = run_killed(f"""
from pointpeft_ray.serving.adapter_bank import BankEntry, write_adapter_bank
write_adapter_bank({str(bank)!r}, [{entries['a']}])
write_adapter_bank({str(bank)!r}, [{entries['b']}])
""", "index.json", skip=1)
    assert child.returncode == -signal.SIGKILL, child.stderr
    index = json.loads((bank / "index.json").read_text())  # an independent reader
    assert sorted(index["entries"]) == ["a"]
    assert (bank / index["entries"]["a"]["adapter"] / "adapter_config.json").is_file()
    assert len(list((bank / "adapters").iterdir())) == 2  # b's copy, which nothing references

    write_adapter_bank(bank, [BankEntry("b", tmp_path / "b" / "best" / "adapter", config.model_dump_json(), 40.0)])
    index = read_bank_index(bank)
    assert sorted(index["entries"]) == ["a", "b"]
    assert sorted(p.name for p in (bank / "adapters").iterdir()) == sorted(
        Path(r["adapter"]).name for r in index["entries"].values())  # the orphan is gone
    assert sorted(os.listdir(bank)) == [".index.lock", "adapters", "index.json"]


# --- a full disk ---


def test_a_table_write_on_a_full_disk_names_the_file_and_keeps_the_previous_table(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.fail("/dev/full is missing: this test needs a Linux /dev")
    path = tmp_path / "trials.parquet"
    space = SearchSpace.from_yaml(CPU_DEMO)
    write_table_atomic(trials_table(records()[:1], space), path)
    # The temporary is a link to /dev/full: every write to it fails with ENOSPC, as on a full disk.
    _temp_name(path).symlink_to("/dev/full")
    with pytest.raises(WriteError, match=r"trials\.parquet: could not be written \(.*No space left on device"):
        write_table_atomic(trials_table(records(), space), path)
    assert pq.read_table(path).num_rows == 1
    assert leftovers(tmp_path, "trials.parquet") == [] and Path("/dev/full").exists()


# --- two writers of one folder ---


HOLD = """
import sys, time
from pointpeft_ray.folder_lock import exclusive_folder
with exclusive_folder(sys.argv[1], "test"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def held_folder(tmp_path):
    """A folder another process holds for writing (until the test ends, or kills it)."""
    def hold(folder: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert process.stdout.readline().strip() == "held"
        holders.append(process)
        return process
    holders = []
    yield hold
    for process in holders:
        process.kill()
        process.wait()


def test_a_folder_held_by_another_process_is_refused_until_that_process_dies(tmp_path, held_folder):
    folder = tmp_path / "runs" / "x"
    holder = held_folder(folder)
    with pytest.raises(FolderInUseError, match=rf"another process \(pid {holder.pid} on .*-c\b"):
        with exclusive_folder(folder):
            pass
    holder.send_signal(signal.SIGKILL)  # a holder killed with -9 holds nothing: the kernel drops the lock
    holder.wait()
    with exclusive_folder(folder):
        with exclusive_folder(folder):  # re-entrant in one process (a job, then its stages)
            pass


def test_a_search_or_job_on_a_folder_in_use_refuses_before_writing_anything(tmp_path, held_folder):
    from pointpeft_ray.distributed.tune import SearchSettings, run_search
    from pointpeft_ray.engine.config import TrainConfig
    from pointpeft_ray.jobs.runner import run_job
    from pointpeft_ray.jobs.spec import JobSpec

    held_folder(tmp_path / "runs" / "busy")
    base = TrainConfig.from_yaml(_tiny_train_yaml(tmp_path, epochs=1))
    with pytest.raises(FolderInUseError, match="search 'busy' is being written by another process"):
        settings = SearchSettings(name="busy", storage_path=str(tmp_path / "runs"))
        run_search(base, SearchSpace.from_yaml(CPU_DEMO), settings)
    job = JobSpec.from_yaml(ROOT / "jobs" / "quickstart.yaml").replace(name="busy", storage=str(tmp_path / "runs"))
    with pytest.raises(FolderInUseError, match="job 'busy' is being written by another process"):
        run_job(job)
    assert sorted(os.listdir(tmp_path / "runs" / "busy")) == [".pointpeft-writer.lock"]


def test_a_job_whose_search_folder_has_tables_but_no_tune_state_says_what_to_do(tmp_path):
    from pointpeft_ray.errors import PointPEFTError
    from pointpeft_ray.jobs.runner import _tune
    from pointpeft_ray.jobs.spec import JobSpec

    job = JobSpec.from_yaml(ROOT / "jobs" / "quickstart.yaml").replace(name="cut", storage=str(tmp_path / "runs"))
    search_dir = tmp_path / "runs" / "cut" / "tune"
    write_table_atomic(trials_table(records(), SearchSpace.from_yaml(CPU_DEMO)), search_dir / "trials.parquet")
    with pytest.raises(PointPEFTError, match="holds a search's tables but no Ray Tune state.*move that folder aside"):
        _tune(job, tmp_path / "runs" / "cut", None)
    assert sorted(os.listdir(search_dir)) == ["trials.parquet"]


def test_two_train_commands_on_one_run_name_the_second_refuses(tmp_path):
    config = _tiny_train_yaml(tmp_path, epochs=40)
    command = [sys.executable, "-m", "pointpeft_ray.cli", "train", str(config), "--in-process",
               "--storage", str(tmp_path / "runs"), "--name", "shared"]
    state = tmp_path / "runs" / "shared" / "last" / "run_state.pt"
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not state.is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert state.is_file(), "the first run wrote no checkpoint"
        second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"run 'shared' is being written by another process (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr and "epoch " not in second.stdout
        assert first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert load_state(state)["epochs_done"] >= 1  # its checkpoint, whole


# --- a Tune trial process killed mid-search ---


def _trial_processes() -> list[psutil.Process]:
    """The function-trainable actors of this session's Ray (descendants of this process)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def test_a_killed_trial_process_is_retried_from_its_checkpoint_and_nothing_is_counted_twice(local_ray, tmp_path):
    from pointpeft_ray.distributed.tune import SearchSettings, run_search
    from pointpeft_ray.engine.config import TrainConfig

    base = TrainConfig.from_yaml(_tiny_train_yaml(tmp_path, epochs=4))
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({"parameters": {
        "optim.lr": {"type": "float", "low": 5.0e-4, "high": 5.0e-3, "log": True}}}))
    settings = SearchSettings(samples=2, name="killed-trial", storage_path=str(tmp_path / "runs"), asha=False,
                              max_concurrent=1, max_failures=1)
    outcome = {}
    search = threading.Thread(target=lambda: outcome.setdefault(
        "result", run_search(base, SearchSpace.from_yaml(space_file), settings)))
    search.start()
    experiment = tmp_path / "runs" / "killed-trial"
    deadline, killed = time.time() + 240, []
    while time.time() < deadline and search.is_alive() and not killed:
        if list(experiment.glob("*/checkpoint_*/run_state.pt")):  # a trial has checkpointed an epoch
            killed = _trial_processes()
            for process in killed:
                process.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    search.join(timeout=400)
    assert killed, "no trial process was found to kill"
    assert not search.is_alive() and "result" in outcome
    trials = pd.read_parquet(experiment / "trials.parquet")  # an independent reader
    assert len(trials) == 2 and (trials.status == "completed").all(), trials[["status", "error"]]
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert sorted(epochs.groupby("trial_id").epoch.apply(sorted).tolist()) == [[1, 2, 3, 4]] * 2
    # Tune's own log of each trial: the killed one went on from its checkpoint, not from epoch 1
    reported = [[json.loads(line)["epoch"] for line in path.read_text().splitlines()]
                for path in experiment.glob("*/result.json")]
    assert len(reported) == 2 and all(seen.count(1) == 1 and seen[-1] == 4 for seen in reported), reported
