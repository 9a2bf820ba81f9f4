"""The PEFT vs full fine-tune vs linear probe table (issue 4's acceptance).

Pre-trains a CPU backbone with Point-MAE on synth/clean (cached: paid once), then
fine-tunes it on each variant x seed x mode, in-process, and prints the table (mean +- std
over seeds). Every finished cell is recorded in OUT/results.json and an interrupted cell
resumes from its run directory, so rerunning continues where it stopped.

    python scripts/experiments_acceptance.py [--preset small|tiny] [--epochs 10] [--seeds 0 1 2]
        [--variants objbg hardest] [--modes peft full linear] [--samples-per-class N]
        [--pretrain-epochs N] [--pretrain-samples-per-class N] [--head-hidden N] [--peft KEY=VALUE ...] [--lr MODE=LR ...] [--out DIR]

--preset small (default): configs/synth_small_*.yaml and configs/pretrain_synth_small.yaml
(about an hour of CPU per seed). --preset tiny: the `tiny` backbone pre-trained by
configs/pretrain_synth_tiny.yaml (the shipped builtin:tiny-synth-clean: 3,000 clouds, 100
epochs; cached by its settings), 40 clouds per class, each mode at its own lr (TINY_LR). --head-hidden narrows
the classification head (published: 256 wide, which alone is most of what PEFT trains on a
64-wide backbone); --peft sets Point-PEFT options of the PEFT cells (e.g. adapter_dim=4:
the published r = 16 is C/24 on the 384-wide backbone, C/4 on the 64-wide one). One --out
folder per setting (the script refuses to mix them).

The acceptance table (docs/experiments.md; PEFT within a point of full fine-tuning at 4.8%):

    python scripts/experiments_acceptance.py --preset tiny --epochs 60 --head-hidden 56 --peft adapter_dim=4 \
        --out runs/acceptance-tiny-bigpre
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pointpeft_ray import configuration  # noqa: E402
from pointpeft_ray.atomic import atomic_write_text  # noqa: E402
from pointpeft_ray.engine.config import TrainConfig  # noqa: E402
from pointpeft_ray.engine.loop import train  # noqa: E402
from pointpeft_ray.errors import ConfigError  # noqa: E402
from pointpeft_ray.pretrain.cache import ensure_pretrained, read_manifest  # noqa: E402
from pointpeft_ray.pretrain.config import PretrainConfig  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="fine-tune epochs per cell")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="override the pretrain config's epochs")
    p.add_argument("--pretrain-samples-per-class", type=int, default=None,
                   help="synth/clean clouds per class to pre-train on (default: the pretrain config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["objbg", "hardest"])
    p.add_argument("--modes", nargs="+", default=["peft", "full", "linear"])
    p.add_argument("--samples-per-class", type=int, default=None, help="synthetic training size (default: the suite's)")
    p.add_argument("--preset", choices=["small", "tiny"], default="small")
    p.add_argument("--head-hidden", type=int, default=None,
                   help="hidden width of the classification head (default: the published 256); on a CPU-sized "
                        "backbone the published head alone is a large share of the parameters")
    p.add_argument("--peft", nargs="+", default=[], metavar="KEY=VALUE",
                   help="Point-PEFT options for the PEFT cells (validated like a config's peft section)")
    p.add_argument("--lr", nargs="+", default=[], metavar="MODE=LR",
                   help="a mode's learning rate instead of its default (tiny: TINY_LR; small: its config)")
    p.add_argument("--out", default=None, help="default: runs/acceptance (small), runs/acceptance-tiny (tiny)")
    args = p.parse_args()
    args.peft = parse_key_values(p, "--peft", args.peft)
    args.lr = {mode: parse_lr(p, mode, lr) for mode, lr in parse_key_values(p, "--lr", args.lr).items()}
    args.out = args.out or str(ROOT / "runs" / ("acceptance" if args.preset == "small" else "acceptance-tiny"))
    return args


def parse_key_values(parser, flag: str, items: list[str]) -> dict:
    try:
        return configuration.parse_key_values(items, flag)
    except ConfigError as err:
        parser.error(str(err))


def parse_lr(parser, mode: str, value) -> float:
    try:
        lr = float(value)  # YAML reads 2e-3 as a string
    except (TypeError, ValueError):
        lr = -1.0
    if mode not in ("peft", "full", "linear") or lr <= 0:
        parser.error(f"--lr expects MODE=LR with MODE peft, full or linear and LR > 0, got {mode}={value}")
    return lr


# Each mode at its own lr on the tiny backbone (8-10 epochs): PEFT and the linear probe
# train few parameters and take a larger step than full fine-tuning.
TINY_LR = {"peft": 5.0e-3, "full": 1.0e-3, "linear": 5.0e-3}


# The tiny cells' base (the quick start's settings when this table was made).
TINY_BASE = {"mode": "peft", "model": {"preset": "tiny"},
             "data": {"task": "synth/hardest", "options": {"samples_per_class": 40, "points": 256}},
             "optim": {"epochs": 8, "warmup_epochs": 1, "batch_size": 16, "lr": 2.0e-3}}


def pretrain_config(args) -> PretrainConfig:
    if args.preset == "tiny":  # the shipped backbone's pre-training (builtin:tiny-synth-clean)
        config = PretrainConfig.from_yaml(ROOT / "configs" / "pretrain_synth_tiny.yaml")
    else:
        config = PretrainConfig.from_yaml(ROOT / "configs" / "pretrain_synth_small.yaml")
    if args.pretrain_epochs:
        config = config.replace(optim=config.optim.replace(epochs=args.pretrain_epochs).model_dump())
    if args.pretrain_samples_per_class:
        options = {**config.data.options, "samples_per_class": args.pretrain_samples_per_class}
        config = config.replace(data={**config.data.model_dump(), "options": options})
    return config


def pretrained_checkpoint(args) -> tuple[str, dict]:
    path = ensure_pretrained(pretrain_config(args))  # cached by its settings: paid once
    return str(path), read_manifest(path) or {}


def cell_config(mode: str, variant: str, seed: int, checkpoint: str, args, out: Path) -> TrainConfig:
    if args.preset == "tiny":
        base = TrainConfig.from_dict(TINY_BASE)
        config = base.replace(mode=mode, optim=base.optim.replace(lr=TINY_LR[mode]).model_dump())
        options = {**base.data.options, **({"samples_per_class": args.samples_per_class}
                                            if args.samples_per_class else {})}
    else:
        config = TrainConfig.from_yaml(ROOT / "configs" / f"synth_small_{mode}.yaml")
        options = {"samples_per_class": args.samples_per_class} if args.samples_per_class else {}
    optim = config.optim.replace(epochs=args.epochs, **({"lr": args.lr[mode]} if mode in args.lr else {}))
    model = config.model.model_dump()
    return config.replace(
        seed=seed, run_dir=str(out / "cells" / f"{variant}-{mode}-seed{seed}"),
        model={**model, "checkpoint": checkpoint,
               "backbone": {**model["backbone"], **({"head_hidden": args.head_hidden} if args.head_hidden else {})}},
        data={**config.data.model_dump(), "task": f"synth/{variant}", "options": options},
        optim=optim.model_dump(),
        peft={**configuration.given_fields(config.peft), **(args.peft if mode == "peft" else {})},
    )


def run_cell(config: TrainConfig) -> dict:
    start = time.perf_counter()
    result = train(config, echo=lambda *_: None,
                   report=lambda m: print(f"    epoch {m['epoch']:>2} loss {m['train_loss']:.3f} "
                                          f"val {m.get('val_accuracy', float('nan')):.1f}", flush=True))
    return {"best_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
            "trainable_params": result.trainable_params, "total_params": result.total_params,
            "wall_seconds": time.perf_counter() - start, "epochs": config.optim.epochs}


def save(results: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True))


def table(results: dict, args) -> str:
    lines = ["| variant | mode | trainable | share | accuracy (mean +- std) | seeds | s/epoch |", "|---|---|---|---|---|---|---|"]
    for variant in args.variants:
        for mode in args.modes:
            cells = [results["cells"][k] for k in results["cells"] if k.startswith(f"{variant}-{mode}-")]
            if not cells:
                continue
            accs = [c["best_accuracy"] for c in cells]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            share = 100.0 * cells[0]["trainable_params"] / cells[0]["total_params"]
            per_epoch = statistics.mean(c["wall_seconds"] / c["epochs"] for c in cells)
            lines.append(f"| synth/{variant} | {mode} | {cells[0]['trainable_params']:,} | {share:.1f}% | "
                         f"{statistics.mean(accs):.1f} +- {spread:.1f} | {len(cells)} | {per_epoch:.0f} |")
    return "\n".join(lines)


def read_results(out: Path) -> tuple[Path, dict]:
    """OUT/results.json and the cells recorded in it so far (resumable runs)."""
    path = out / "results.json"
    return path, (json.loads(path.read_text()) if path.is_file() else {"cells": {}})


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    path, results = read_results(out)
    checkpoint, manifest = pretrained_checkpoint(args)
    results["pretrain"] = {"checkpoint": checkpoint, **{k: manifest.get(k) for k in ("epochs", "final_loss", "wall_seconds")}}
    # Cells of other settings must not pass for these: one output folder per setting.
    settings = {"preset": args.preset, "head_hidden": args.head_hidden, "checkpoint": checkpoint,
                "samples_per_class": args.samples_per_class, **({"peft": args.peft} if args.peft else {}),
                **({"lr": args.lr} if args.lr else {})}
    if results.setdefault("settings", settings) != settings:
        print(f"{path} holds cells of other settings ({results['settings']}); these are {settings}: "
              f"pass another --out", file=sys.stderr)
        return 2
    print(f"pre-trained backbone: {checkpoint} ({results['pretrain']})", flush=True)
    # Seed-major: a complete one-seed table comes first, later seeds refine it.
    for seed in args.seeds:
        for variant in args.variants:
            for mode in args.modes:
                key = f"{variant}-{mode}-seed{seed}"
                if key in results["cells"] and results["cells"][key]["epochs"] == args.epochs:
                    continue
                print(f"[cell] {key}", flush=True)
                results["cells"][key] = run_cell(cell_config(mode, variant, seed, checkpoint, args, out))
                save(results, path)
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
