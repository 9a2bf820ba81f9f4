"""`compile: true`: torch.compile gives the eager model's logits and gradients, keeps
parameter names, and falls back to eager mode with one message where compiling fails."""
import copy

import torch
import torch.nn.functional as F

from pointpeft_ray.engine import acceleration
from pointpeft_ray.engine.loop import train
from pointpeft_ray.models import MemoryBank, PointMAEBackbone, get_peft_model
from pointpeft_ray.models.presets import get_preset
from tests.conftest import logged
from tests.test_engine_loop import tiny_config


def tiny_peft_pair():
    preset = get_preset("tiny")
    torch.manual_seed(0)
    model = get_peft_model(PointMAEBackbone(preset.backbone), preset.peft_config(bank_query="cached"), 5)
    dim = preset.backbone.trans_dim
    model.attach_memory_bank(MemoryBank(torch.randn(30, dim), torch.randn(30, dim)))
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(4, preset.num_points, 3, generator=gen) * 2 - 1
    return model, copy.deepcopy(model), points


def step(model, points):
    """One training step's logits and the trainable parameters' gradients."""
    model.train()
    torch.manual_seed(3)  # the same dropout / drop-path draws in both models
    logits = model(points, sample_index=torch.arange(len(points)))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def test_compiled_step_equals_eager_step(monkeypatch):
    # inductor's own RNG would draw different dropout masks from eager mode's
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    eager, compiled, points = tiny_peft_pair()
    acceleration.compile_model(compiled, True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their keys
    want_logits, want_grads = step(eager, points)
    got_logits, got_grads = step(compiled, points)
    assert not compiled.forward.fell_back, compiled.forward.fell_back
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    # Fused reductions sum in another order: equal up to float32 rounding, relative to the
    # tensor's scale (and to the whole gradient's, for sums that cancel to ~0).
    overall = max(g.abs().max().item() for g in want_grads.values())
    for name, want in want_grads.items():
        error = (got_grads[name] - want).abs().max().item()
        assert error <= 1e-4 * want.abs().max().item() + 1e-6 * overall, (name, error)


def test_a_failing_compiler_falls_back_to_eager_with_one_message():
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    eager, compiled, points = tiny_peft_pair()
    acceleration.compile_model(compiled, True, backend=broken_backend)
    eager.eval(), compiled.eval()
    index = torch.arange(len(points))
    with torch.no_grad(), logged() as messages:
        for _ in range(2):
            torch.testing.assert_close(compiled(points, sample_index=index), eager(points, sample_index=index))
    assert compiled.forward.fell_back
    fallbacks = [m for m in messages if "running eagerly" in m]
    assert len(fallbacks) == 1 and "no C++ compiler found" in fallbacks[0]


def test_disabled_compile_leaves_the_model_alone():
    model, _, _ = tiny_peft_pair()
    forward = model.forward
    assert acceleration.compile_model(model, False) is model and model.forward == forward


def test_training_loop_compiles_when_the_config_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(acceleration, "BACKEND", "eager")  # dynamo tracing without inductor's compile time
    reports = []
    with logged() as messages:
        train(tiny_config(tmp_path, compile=True, optim={"epochs": 1, "warmup_epochs": 0, "batch_size": 8}),
              report=reports.append)
    assert any(m.startswith("[compile]") and "compiled" in m for m in messages), messages
    assert not any("running eagerly" in m for m in messages)
    assert reports and reports[-1]["train_loss"] > 0
