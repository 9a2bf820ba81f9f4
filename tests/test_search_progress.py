"""The search's progress line: counts, best accuracy, time spent and left, and the
30-second heartbeat while no trial ends."""
from types import SimpleNamespace

from pointpeft_ray.distributed.search_progress import SearchProgress


def test_progress_line_counts_trials_and_estimates_time_left(monkeypatch, log_messages):
    clock = [1000.0]
    monkeypatch.setattr("pointpeft_ray.distributed.search_progress.time.time", lambda: clock[0])
    lines = log_messages
    progress = SearchProgress(samples=4, max_epochs=8, every_s=30)
    progress.setup()
    a, b, c = (SimpleNamespace(trial_id=t) for t in ("a", "b", "c"))
    for epoch in range(1, 9):
        progress.on_trial_result(0, [], a, {"epoch": epoch, "best_accuracy": 10.0 + epoch})
    progress.on_trial_result(0, [], b, {"epoch": 4, "best_accuracy": 12.0})
    clock[0] += 60
    progress.on_trial_complete(0, [], a)
    # a done (1 trial) + b half done = 1.5 trials' worth in 60 s: 2.5 left take ~100 s
    assert lines[-1] == "[tune] 1/4 trials done (1 completed), 1 running; best 18.0 (a); 1m00s elapsed, ~1m40s left"
    progress.on_trial_complete(0, [], b)  # ASHA stopped it at epoch 4
    progress.on_trial_result(0, [], c, {"epoch": 1})
    progress.on_trial_error(0, [], c)
    assert lines[-1].startswith("[tune] 3/4 trials done (1 completed, 1 stopped, 1 failed), 0 running; best 18.0 (a)")
    count = len(lines)
    clock[0] += 29
    progress.on_step_end(0, [])
    assert len(lines) == count  # nothing new within 30 s of the last line
    clock[0] += 2
    progress.on_step_end(0, [])
    assert len(lines) == count + 1  # the heartbeat
