"""The published-compatibility ablation (docs/experiments.md, "Ablation").

On the acceptance table's setting (the `tiny` backbone pre-trained on 3,000 synth/clean
clouds for 100 epochs; 40 clouds per class; 56-wide head, adapter r = 4, lr 5e-3), one
Point-PEFT fine-tune per arm x variant x seed:

  ours        our defaults (recipe ours)
  published   recipe: published (every published behaviour, peft preset 'published')
  +FIX        the published recipe with one of our fixes switched on

Each cell is recorded in OUT/results.json as it finishes and an interrupted cell resumes
from its run directory, so rerunning continues where it stopped. Prints the table: mean
+- std of the best test accuracy over the seeds.

    python scripts/experiments_published_ablation.py [--arms ours published +bn ...]
        [--variants objbg hardest] [--seeds 0 1 2] [--epochs 60] [--out DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import experiments_acceptance as acceptance  # noqa: E402
from pointpeft_ray.configuration import given_fields  # noqa: E402

ARMS: dict[str, dict] = {
    "ours": {"recipe": "ours", "peft": {}},
    "published": {"recipe": "published", "peft": {}},
    "+bn": {"recipe": "published", "peft": {"frozen_batchnorm": "eval"}},
    "+augmentation": {"recipe": "published", "peft": {}, "augment": "rotate"},
    "+cosine": {"recipe": "published", "peft": {"bank_normalize": True}},
    "+self_exclusion": {"recipe": "published", "peft": {"exclude_self": True}},
    "+propagation": {"recipe": "published", "peft": {"propagation": "inverse_distance", "interp_neighbours": 3}},
    "+init": {"recipe": "published", "peft": {"adapter_init": "zero"}},
    "+row_offset": {"recipe": "published", "peft": {"prompt_row_offset": "per_sample"}},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--variants", nargs="+", default=["objbg", "hardest"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--out", default=str(ROOT / "runs" / "published-ablation"))
    return p.parse_args()


def acceptance_settings(epochs: int) -> argparse.Namespace:
    """The acceptance table's tiny setting (scripts/experiments_acceptance.py, docs/experiments.md)."""
    return argparse.Namespace(preset="tiny", pretrain_epochs=100, pretrain_samples_per_class=200,
                              samples_per_class=None, head_hidden=56, peft={"adapter_dim": 4}, lr={},
                              epochs=epochs)


def arm_config(arm: str, variant: str, seed: int, checkpoint: str, settings, out: Path):
    spec = ARMS[arm]
    config = acceptance.cell_config("peft", variant, seed, checkpoint, settings, out)
    peft = {**given_fields(config.peft), **spec["peft"]}  # the tiny preset's bank encoder groups as its pre-training: 16
    data = config.data.model_dump()
    data["augment"] = spec.get("augment")
    return config.replace(recipe=spec["recipe"], peft=peft, data=data,
                          run_dir=str(out / "cells" / f"{variant}-{arm}-seed{seed}"))


def table(results: dict, arms: list[str], variants: list[str]) -> str:
    lines = ["| arm | " + " | ".join(f"synth/{v}" for v in variants) + " | trainable |",
             "|---|" + "---|" * (len(variants) + 1)]
    for arm in arms:
        row, trainable = [], ""
        for variant in variants:
            cells = [c for k, c in results["cells"].items() if k.startswith(f"{variant}-{arm}-seed")]
            if not cells:
                row.append("-")
                continue
            accs = [c["best_accuracy"] for c in cells]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            row.append(f"{statistics.mean(accs):.1f} +- {spread:.1f} (n={len(accs)})")
            trainable = f"{cells[0]['trainable_params']:,}"
        lines.append(f"| {arm} | " + " | ".join(row) + f" | {trainable} |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    path, results = acceptance.read_results(out)
    settings = acceptance_settings(args.epochs)
    checkpoint, manifest = acceptance.pretrained_checkpoint(settings)
    results["pretrain"] = {"checkpoint": checkpoint, **{k: manifest.get(k) for k in ("epochs", "final_loss")}}
    print(f"pre-trained backbone: {checkpoint}", flush=True)
    for seed in args.seeds:  # seed-major: a complete one-seed table first
        for variant in args.variants:
            for arm in args.arms:
                key = f"{variant}-{arm}-seed{seed}"
                if key in results["cells"] and results["cells"][key]["epochs"] == args.epochs:
                    continue
                print(f"[cell] {key}", flush=True)
                results["cells"][key] = {**acceptance.run_cell(arm_config(arm, variant, seed, checkpoint, settings,
                                                                         out)), "arm": arm}
                acceptance.save(results, path)
    print(table(results, args.arms, args.variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
