"""`pointpeft-ray convert published-pointpeft`: the released Point-PEFT files as an
adapter directory (and, optionally, an entry of an adapter bank for `predict`)."""
from __future__ import annotations

import argparse
from pathlib import Path

CONVERT_DESCRIPTION = """\
Read the files the Point-PEFT authors released for ScanObjectNN PB_T50_RS
(ckpt-best.pth, Point-MAE's pretrain.pth and the memory bank cache_shape.pt,
which their code loads as ./ckpts/train_f_pos_shape_scan.pt) and write an adapter
directory: the published model with every published behaviour switched on
(peft preset 'published'). Its eval logits are the published model's.

With --adapter-bank, the adapter is also added to an adapter bank under --name,
so that `pointpeft-ray predict --bank DIR --task NAME --test-split` evaluates it on
the task's test split (read from --data-root).

Example:
  pointpeft-ray convert published-pointpeft --ckpt ckpts/ckpt-best.pth \\
      --pretrain ckpts/pretrain.pth --bank ckpts/cache_shape.pt --out published_adapter \\
      --adapter-bank adapters --name pb_t50_rs --task scanobjectnn/pb_t50_rs --data-root data/ScanObjectNN/h5_files
"""


def add_convert_command(commands) -> None:
    """Register `convert` on the CLI's subcommands (cli.build_parser)."""
    convert = commands.add_parser("convert", help="convert published checkpoints to pointpeft-ray adapters")
    kinds = convert.add_subparsers(dest="kind", required=True)
    p = kinds.add_parser("published-pointpeft", help="the released Point-PEFT ckpt-best.pth + pretrain.pth + bank",
                         description=CONVERT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="the released ckpt-best.pth (Point-PEFT fine-tuned)")
    p.add_argument("--pretrain", required=True, help="Point-MAE's pretrain.pth the run started from")
    p.add_argument("--bank", required=True, help="the released memory bank (a C x N tensor, e.g. cache_shape.pt)")
    p.add_argument("--out", required=True, help="adapter directory to write")
    p.add_argument("--num-classes", type=int, default=15, help="classes of the checkpoint's head (default 15)")
    p.add_argument("--num-group", type=int, default=128, help="patches of the fine-tune grouping (ScanObjectNN 128, "
                   "ModelNet40 64)")
    p.add_argument("--group-size", type=int, default=32, help="points per patch (default 32)")
    p.add_argument("--num-heads", type=int, default=6, help="attention heads (default 6; not in a checkpoint)")
    p.add_argument("--query-groups", type=int, default=64, help="patches of the bank encoder (published 64)")
    p.add_argument("--prompt-depth", type=int, default=6, help="prompted blocks (published 6)")
    p.add_argument("--adapter-bank", default=None, metavar="DIR", help="also add the adapter to this adapter bank")
    p.add_argument("--name", default="published", help="its entry name in --adapter-bank (default: published)")
    p.add_argument("--task", default="scanobjectnn/pb_t50_rs", help="the entry's task (default: scanobjectnn/pb_t50_rs)")
    p.add_argument("--data-root", default=None, help="the task's dataset folder, for predict --test-split")
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from ..models.checkpoint import read_state_dict
    from ..models.peft.published import backbone_of, load_published_pointpeft

    shape = backbone_of(read_state_dict(args.ckpt)).replace(num_group=args.num_group, group_size=args.group_size,
                                                            num_heads=args.num_heads)
    model = load_published_pointpeft(args.ckpt, args.pretrain, args.bank, num_classes=args.num_classes,
                                     backbone=shape, prompt_depth=args.prompt_depth,
                                     query_groups=args.query_groups)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"published Point-PEFT: {trainable:,} trained of {total:,} parameters "
          f"({100 * trainable / total:.2f}%), memory bank of {len(model.memory_bank)} rows")
    out = model.save_adapter(args.out)
    print(f"adapter written to {out}")
    if args.adapter_bank:
        index = add_to_adapter_bank(model, out, args)
        print(f"entry {args.name!r} added to {index}; evaluate it with:\n"
              f"  pointpeft-ray predict --bank {args.adapter_bank} --task {args.name} --test-split --quiet")
    return 0


def add_to_adapter_bank(model, adapter_dir: Path, args) -> Path:
    """The converted adapter as a bank entry whose run config is the published recipe."""
    from ..engine.config import TrainConfig
    from .adapter_bank import BankEntry, write_adapter_bank

    config = TrainConfig(
        mode="peft", recipe="published",
        model={"preset": None, "backbone": model.backbone.config.model_dump(),
               "checkpoint": str(Path(args.pretrain).expanduser().resolve())},
        peft=model.peft_config.model_dump(),
        data={"task": args.task, "root": args.data_root},
    )
    entry = BankEntry(args.name, adapter_dir, config, metadata={"source": "published ckpt-best.pth",
                                                                 "checkpoint": str(args.ckpt)})
    return write_adapter_bank(args.adapter_bank, [entry])
