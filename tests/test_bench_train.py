"""`pointpeft-ray bench train`: in-process and Ray Train runs of the same fine-tune,
alternating, with the figures the README quotes written to JSON."""
import json

import pytest

from pointpeft_ray.bench.train import run_bench


def test_bench_train_compares_the_same_run_in_process_and_on_ray_train(local_ray, tmp_path, capsys):
    out = tmp_path / "bench.json"
    payload = run_bench(epochs=1, json_path=str(out), repeats=2, preset="tiny", samples_per_class=4)

    assert [set(pair) for pair in payload["pairs"]] == [{"in_process", "ray_train"}] * 2
    # the same seeded run both ways: the same accuracy
    assert payload["ray_train_best_accuracy"] == pytest.approx(payload["in_process_best_accuracy"])
    for pair in payload["pairs"]:
        for run in pair.values():
            assert 0 < run["loop_seconds"] <= run["wall_seconds"]
    assert payload["ratio"] == pytest.approx(payload["ray_train_seconds"] / payload["in_process_seconds"])
    assert payload["ray_train_outside_loop_seconds"] > 0  # worker start-up is outside the loop
    assert json.loads(out.read_text())["repeats"] == 2
    assert any(line.startswith("ratio ") for line in capsys.readouterr().out.splitlines())


def test_bench_train_needs_at_least_one_repeat():
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        run_bench(repeats=0)
