"""Command line: parse, call one function, print. `pointpeft-ray --help`."""
from __future__ import annotations

import argparse
import sys

from .errors import PointPEFTError


def _add_bench_model(sub) -> None:
    p = sub.add_parser("model", help="train step time and peak memory: full fine-tune vs Point-PEFT")
    p.add_argument("--preset", default="point_mae", help="model size: point_mae (published), small, tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=None, help="points per cloud (default: the preset's)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--variants", default="full,peft,peft_frozen_pass")
    p.add_argument("--json", dest="json_path", default=None, help="also write the figures to this JSON file")
    p.add_argument("--profile", dest="profile_dir", default=None, help="write a torch.profiler table per variant here")
    p.set_defaults(func=_run_bench_model)


def _run_bench_model(args) -> int:
    import torch

    from .bench.model import VARIANTS, BenchSettings, run_bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise PointPEFTError(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    settings = BenchSettings(preset=args.preset, batch=args.batch, num_points=args.points, steps=args.steps,
                             warmup=args.warmup, device=device, bf16=args.bf16,
                             profile_dir=args.profile_dir)
    from .models.presets import get_preset

    get_preset(args.preset)  # fail fast on a bad name
    run_bench(settings, variants, args.json_path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointpeft-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks (a table, and JSON with --json)")
    _add_bench_model(bench.add_subparsers(dest="bench", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PointPEFTError, ValueError) as err:
        print(f"pointpeft-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pointpeft-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
