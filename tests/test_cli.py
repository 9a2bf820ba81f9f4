import json
import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pointpeft_ray.cli", *args], capture_output=True, text=True, timeout=300)


def test_bench_model_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "model", "--preset", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1",
                     "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "PEFT step / full step" in result.stdout and "grouping share" in result.stdout
    payload = json.loads(out.read_text())
    variants = {v["variant"]: v for v in payload["variants"]}
    assert set(variants) == {"full", "peft", "peft_frozen_pass"}
    assert variants["peft"]["trainable_params"] < variants["full"]["trainable_params"]
    for v in variants.values():
        assert v["step_seconds"] > 0 and len(v["step_times"]) == 2 and v["peak_memory_mb"] >= 0
        assert v["fps_backend"] == "torch" and v["compiled"] is False  # the CPU defaults
    summary = payload["summary"]
    assert summary["step_ratio"] == variants["peft"]["step_seconds"] / variants["full"]["step_seconds"]
    assert 0 < summary["grouping_share"] < 1


def test_bad_arguments_are_clear_errors():
    result = run_cli("bench", "model", "--preset", "huge")
    assert result.returncode == 2 and "unknown model preset 'huge'" in result.stderr
    result = run_cli("bench", "model", "--preset", "tiny", "--variants", "full,lora")
    assert result.returncode == 2 and "unknown ['lora']" in result.stderr
    result = run_cli("bench", "model", "--preset", "tiny", "--device", "cpu", "--fps", "triton")
    assert result.returncode == 2 and "--fps triton: the Triton kernel cannot run on device cpu" in result.stderr


def test_data_prepare_reads_typed_task_options_and_names_a_bad_one(tmp_path):
    cache = tmp_path / "cache"
    result = run_cli("data", "prepare", "synth/clean", "--cache-dir", str(cache),
                     "--option", "samples_per_class=1", "--option", "points=64")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "15" in result.stdout  # one cloud per class, 15 classes
    bad = run_cli("data", "prepare", "synth/clean", "--cache-dir", str(cache), "--option", "points")
    assert bad.returncode != 0 and "--option expects KEY=VALUE, got 'points'" in bad.stderr


def test_key_values_are_read_as_yaml_scalars():
    from pointpeft_ray.configuration import parse_key_values
    from pointpeft_ray.errors import ConfigError

    assert parse_key_values(["k=4", "t=0.5", "bank=false", "name=hardest", "empty="], "--peft") == \
        {"k": 4, "t": 0.5, "bank": False, "name": "hardest", "empty": ""}
    with pytest.raises(ConfigError, match="--peft expects KEY=VALUE, got '=3'"):
        parse_key_values(["=3"], "--peft")
