import json
import subprocess
import sys


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
    summary = payload["summary"]
    assert summary["step_ratio"] == variants["peft"]["step_seconds"] / variants["full"]["step_seconds"]
    assert 0 < summary["grouping_share"] < 1


def test_bad_arguments_are_clear_errors():
    result = run_cli("bench", "model", "--preset", "huge")
    assert result.returncode == 2 and "unknown model preset 'huge'" in result.stderr
    result = run_cli("bench", "model", "--preset", "tiny", "--variants", "full,lora")
    assert result.returncode == 2 and "unknown ['lora']" in result.stderr
