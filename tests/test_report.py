"""`pointpeft-ray report`: leaderboard, status counts, failures, importances, best config
and PNG plots, read from an experiment folder written with the real table writers; on a
finished search, a running one, and an empty folder. No Ray, no training."""
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from pointpeft_ray import cli
from pointpeft_ray.results import (
    epochs_table, final_and_best, trials_table, write_best_config, write_table_atomic,
)
from pointpeft_ray.results.importance import search_distributions
from pointpeft_ray.results.search_report import build_report, format_report, report_payload
from pointpeft_ray.search import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
CPU_DEMO = ROOT / "search_spaces" / "cpu_demo.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEARCHED = {"peft.prompt_length", "peft.neighbours", "peft.memory_bank", "peft.top_k", "optim.lr"}
OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n  File \"loop.py\", line 88, in step"

# trial id -> (status, params, val accuracy per epoch, val loss per epoch, trainable params)
TRIALS = {
    "t0": ("completed", {"peft.prompt_length": 8, "peft.neighbours": 6, "peft.memory_bank": True,
                         "peft.top_k": 4, "optim.lr": 1.0e-3}, [50.0, 70.0, 80.0, 79.0], [1.2, 0.8, 0.5, 0.6], 700_000),
    "t1": ("completed", {"peft.prompt_length": 10, "peft.neighbours": 8, "peft.memory_bank": True,
                         "peft.top_k": 6, "optim.lr": 1.5e-3}, [55.0, 72.0, 80.0, 78.0], [1.1, 0.7, 0.4, 0.5], 760_000),
    "t2": ("stopped", {"peft.prompt_length": 4, "peft.neighbours": 4, "peft.memory_bank": False,
                       "optim.lr": 2.0e-4}, [30.0, 40.0], [2.0, 1.7], 500_000),
    "t3": ("completed", {"peft.prompt_length": 6, "peft.neighbours": 4, "peft.memory_bank": False,
                         "optim.lr": 5.0e-4}, [45.0, 60.0, 66.0, 70.0], [1.5, 1.1, 0.9, 0.8], 520_000),
    "t4": ("failed", {"peft.prompt_length": 6, "peft.neighbours": 8, "peft.memory_bank": True,
                      "peft.top_k": 2, "optim.lr": 1.8e-3}, [], [], None),
    "t5": ("running", {"peft.prompt_length": 8, "peft.neighbours": 4, "peft.memory_bank": True,
                       "peft.top_k": 3, "optim.lr": 7.0e-4}, [35.0, 50.0], [1.6, 1.3], None),
    "t6": ("pending", {"peft.prompt_length": 4, "peft.neighbours": 6, "peft.memory_bank": False,
                       "optim.lr": 3.0e-4}, [], [], None),
}


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_yaml(CPU_DEMO)


def epoch_rows(trial_id, accuracies, losses):
    """What the training loop reports per epoch (extra keys are ignored by the table)."""
    return [{"trial_id": trial_id, "epoch": epoch, "lr": 1e-3, "train_loss": loss + 0.1,
             "train_accuracy": acc + 5.0, "train_samples_per_second": 110.0, "val_loss": loss,
             "val_accuracy": acc, "val_mean_class_accuracy": acc - 3.0, "trainable_params": 1}
            for epoch, (acc, loss) in enumerate(zip(accuracies, losses), start=1)]


def trial_record(trial_id, status, params, accuracies, losses, size):
    """A trial as the search records it; a running trial has no metrics yet."""
    record = {"trial_id": trial_id, "status": status, "params": params, "node": "10.0.0.1"}
    if status in ("completed", "stopped"):
        final, best = final_and_best(epoch_rows(trial_id, accuracies, losses))
        record.update(final=final, best=best, epochs=len(accuracies), trainable_params=size,
                      wall_seconds=30.0 * len(accuracies),
                      stop_reason="asha" if status == "stopped" else "max_epochs")
    if status == "failed":
        record.update(error=OOM, epochs=0)
    return record


def write_experiment(folder, space, trial_ids, with_trials=True, with_best_config=True):
    folder.mkdir(parents=True, exist_ok=True)
    chosen = {tid: TRIALS[tid] for tid in trial_ids}
    epochs = [row for tid, (_, _, accs, losses, _) in chosen.items() for row in epoch_rows(tid, accs, losses)]
    write_table_atomic(epochs_table(epochs), folder / "epochs.parquet")
    if with_trials:
        table = trials_table([trial_record(tid, *spec) for tid, spec in chosen.items()], space)
        write_table_atomic(table, folder / "trials.parquet")
        if with_best_config:
            configs = {tid: space.apply(None, params) for tid, (_, params, _, _, _) in chosen.items()}
            write_best_config(table, configs, folder / "best_config.yaml")
    return folder


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, space):
    return write_experiment(tmp_path_factory.mktemp("search"), space, list(TRIALS))


def assert_valid_png(path):
    path = Path(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, f"{path}: only {len(data)} bytes"


def no_temporaries(folder):
    return [name for name in os.listdir(folder) if name.startswith(".")] == []


# --- a search with every status ---

def test_report_through_the_cli_writes_json_and_three_pngs(finished_search, tmp_path):
    out = tmp_path / "report.json"
    plots = tmp_path / "figures"
    done = subprocess.run([sys.executable, "-m", "pointpeft_ray.cli", "report", str(finished_search), "--top", "3",
                           "--plots", str(plots), "--json", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "leaderboard: top 3 of 5 trials" in text
    assert "t4: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in text
    assert "best config (from best_config.yaml)" in text and "PED-ANOVA" in text
    assert "A new study created" not in done.stderr      # Optuna's log stays quiet

    payload = json.loads(out.read_text())
    assert [e["trial_id"] for e in payload["leaderboard"]] == ["t1", "t0", "t3"]
    assert payload["status_counts"] == {"pending": 1, "running": 1, "completed": 3, "stopped": 1, "failed": 1}
    assert payload["failures"] == [{"trial_id": "t4", "error": OOM.splitlines()[0]}]
    assert sum(payload["importances"]["values"].values()) == pytest.approx(1.0)
    assert set(payload["plots"]) == {"learning_curves", "accuracy_vs_params", "accuracy_vs_trainable_params"}
    for path in payload["plots"].values():
        assert Path(path).parent == plots
        assert_valid_png(path)
    assert no_temporaries(plots)


def test_report_function_ranks_counts_and_finds_the_pareto_front(finished_search, tmp_path):
    report = build_report(finished_search, top=10, plots_dir=tmp_path)
    board = report.leaderboard
    # t0 and t1 tie on 80%: the lower best loss (t1, 0.4) ranks first. The running trial t5
    # is ranked on the epochs it reported; the failed and the pending one are not ranked.
    assert [e["trial_id"] for e in board] == ["t1", "t0", "t3", "t5", "t2"]
    assert board[0]["best_accuracy"] == 80.0 and board[0]["best_epoch"] == 3 and board[0]["epochs"] == 4
    assert board[0]["trainable_params"] == 760_000 and board[0]["best_mean_class_accuracy"] == 77.0
    assert board[3]["status"] == "running" and board[3]["best_accuracy"] == 50.0 and board[3]["epochs"] == 2
    assert board[4]["params"]["peft.top_k"] is None      # the bank is off: top_k never sampled
    assert set(board[0]["params"]) == SEARCHED
    assert report.status_counts["failed"] == 1 and report.failures[0]["trial_id"] == "t4"
    # Fewer parameters at equal accuracy: t0 beats t1 on the front.
    assert [p["trial_id"] for p in report.pareto] == ["t2", "t3", "t0"]
    assert report.best_config["source"] == "best_config.yaml" and "t1" in report.best_config["text"]
    for outcome in report.figures.values():
        assert_valid_png(outcome)


def test_importances_cover_every_searched_parameter_and_sum_to_one(finished_search):
    importances = build_report(finished_search, make_plots=False).importances
    assert importances.message is None and importances.trials_used == 4   # completed + stopped
    assert set(importances.values) | set(importances.not_ranked) == SEARCHED
    assert sum(importances.values.values()) == pytest.approx(1.0)
    assert list(importances.values.values()) == sorted(importances.values.values(), reverse=True)


def test_distributions_follow_the_stored_space_and_span_bounds_that_depend_on_other_parameters(space):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    rows = trials_table([trial_record(tid, *spec) for tid, spec in TRIALS.items()], space).to_pylist()
    finished = [row for row in rows if row["status"] in ("completed", "stopped")]
    distributions = search_distributions(search_space_of_rows(space), finished)
    assert distributions["peft.prompt_length"] == IntDistribution(4, 10, step=2)
    assert distributions["peft.memory_bank"] == CategoricalDistribution([True, False])
    assert distributions["optim.lr"] == FloatDistribution(2.0e-4, 2.0e-3, log=True)
    # top_k <= prompt_length - 2: the widest bound any finished trial had (10 - 2).
    assert distributions["peft.top_k"] == IntDistribution(1, 8)


def search_space_of_rows(space):
    return json.loads(json.dumps(space.to_dict()))   # as stored in the file's metadata


def test_an_optuna_that_skips_conditional_parameters_lists_them_as_not_ranked(finished_search, monkeypatch):
    original = optuna.importance.get_param_importances

    def without_conditionals(study, **kwargs):
        values = original(study, **kwargs)
        return {name: value for name, value in values.items() if name != "peft.top_k"}
    monkeypatch.setattr(optuna.importance, "get_param_importances", without_conditionals)
    importances = build_report(finished_search, make_plots=False).importances
    assert "peft.top_k" not in importances.values
    assert "absent from 2 of 4 finished trials" in importances.not_ranked["peft.top_k"]
    assert "not ranked: peft.top_k" in format_report(build_report(finished_search, make_plots=False))


# --- a running search ---

def test_epochs_only_still_reports_with_the_reasons_for_what_is_missing(tmp_path, space):
    folder = write_experiment(tmp_path / "run", space, ["t0", "t5"], with_trials=False)
    report = build_report(folder)
    assert [e["trial_id"] for e in report.leaderboard] == ["t0", "t5"]
    assert report.status_counts["running"] == 2
    assert "not enough trials" in report.importances.message
    assert report.best_config["text"] is None
    assert any("trials.parquet not written yet" in note for note in report.experiment.notes)
    assert_valid_png(report.figures["learning_curves"])
    assert folder / "plots" / "learning_curves.png" == report.figures["learning_curves"]
    assert "no finished trial" in report.figures["accuracy_vs_params"].reason
    text = format_report(report)
    assert "skipped: no finished trial" in text and "best config: no finished trial yet" in text
    json.dumps(report_payload(report))


def test_running_rows_in_the_trials_file_report_with_the_best_trial_so_far(tmp_path, space):
    folder = write_experiment(tmp_path / "run", space, ["t0", "t4", "t5", "t6"], with_best_config=False)
    report = build_report(folder, plots_dir=tmp_path / "figures")
    assert [e["trial_id"] for e in report.leaderboard] == ["t0", "t5"]
    assert report.status_counts == {"pending": 1, "running": 1, "completed": 1, "stopped": 0, "failed": 1}
    assert report.importances.message.startswith("not enough trials: 1 finished")
    # No best_config.yaml yet: the best finished trial's parameters stand in.
    assert report.best_config["trial_id"] == "t0" and "peft.top_k: 4" in report.best_config["text"]
    assert_valid_png(report.figures["accuracy_vs_trainable_params"])


# --- nothing to report ---

def test_an_empty_folder_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "no search results" in error and "trials.parquet" in error and "epochs.parquet" in error
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "experiment folder not found" in capsys.readouterr().err
