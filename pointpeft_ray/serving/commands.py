"""`pointpeft-ray predict`: classify point clouds with the adapters of an adapter bank."""
from __future__ import annotations

import argparse
import time

from ..errors import DataFormatError, PointPEFTError
from ..output import write_json

PREDICT_DESCRIPTION = """\
Classify point clouds with one or more entries of an adapter bank. The frozen
backbone is built once; each --task swaps its adapter (prompts, adapters, head and
the few tuned backbone tensors) onto it.

POINTS_FILE formats:
  .npy  an array of clouds (N, P, 3), or one cloud (P, 3)
  .npz  'points' as above; optionally 'labels' (N,) integer classes (then the
        accuracy is printed too) and 'class_names' (K,) strings
Clouds are used as the task's prepared data holds them (already centred and
scaled by the task's reader); clouds longer than the task's point count are cut
to their first points, as the test loader does. Predicting a task's test split
this way gives the accuracy recorded at training (--test-split does it without
a file).

Examples:
  pointpeft-ray predict --bank JOB/adapters --task clean clouds.npz
  pointpeft-ray predict --bank JOB/adapters --task all --test-split --quiet
"""


def add_predict_command(commands) -> None:
    """Register `predict` on the CLI's subcommands (cli.build_parser)."""
    p = commands.add_parser("predict", help="classify point clouds with the adapters of an adapter bank",
                            description=PREDICT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points_file", nargs="?", metavar="POINTS_FILE", help="clouds to classify (.npy or .npz, see above)")
    p.add_argument("--bank", required=True, metavar="DIR", help="adapter bank folder (holds index.json)")
    p.add_argument("--task", dest="tasks", action="append", required=True, metavar="NAME",
                   help="bank entry to predict with; repeat it for several, or 'all' for every entry")
    p.add_argument("--test-split", action="store_true",
                   help="instead of POINTS_FILE: each entry's own test split, read with its run's data settings")
    p.add_argument("--batch", type=int, default=None, help="clouds per forward pass (default: the run's batch size)")
    p.add_argument("--views", type=int, default=None, help="test-time voting views (default: the run's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="print the summary of each task, not a line per cloud")
    p.add_argument("--json", dest="json_path", default=None,
                   help="also write the predictions (class, confidence) and accuracies per task as JSON")
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    from .adapter_bank import AdapterBank, accuracy, read_points_file

    if (args.points_file is None) == (not args.test_split):
        raise PointPEFTError("predict: give either POINTS_FILE or --test-split (exactly one)")
    for flag, value in (("--batch", args.batch), ("--views", args.views)):
        if value is not None and value < 1:
            raise PointPEFTError(f"{flag} must be at least 1, got {value}")
    given = read_points_file(args.points_file) if args.points_file else None
    bank = AdapterBank.open(args.bank, device=args.device)
    names = bank.resolve_names(args.tasks)
    info = bank.index["backbone"]
    origin = info.get("checkpoint") or f"init seed {info.get('init_seed')}"
    print(f"bank {args.bank}: {len(bank.names)} adapters; backbone {info['fingerprint'][:12]} ({origin}) "
          f"built in {bank.backbone_seconds:.2f}s on {bank.device}")
    payload = {"bank": str(args.bank), "points_file": args.points_file, "device": str(bank.device),
               "backbone": {**info, "seconds": bank.backbone_seconds}, "tasks": {}}
    for name in names:
        record = bank.entry(name)
        source = given if given is not None else bank.load_test_split(name)  # a PointsFile or a PointSplit
        points, labels, file_names = source.points, source.labels, source.class_names
        where = args.points_file if given is not None else f"{record['task']} test split"
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= record["num_classes"]):
            raise DataFormatError(f"{where}: labels {int(labels.min())}..{int(labels.max())} are outside the "
                                  f"{record['num_classes']} classes of entry {name!r}")
        swaps = bank.swaps
        start = time.perf_counter()
        if given is not None and points.shape[1] > record["num_points"]:
            print(f"{name}: clouds of {points.shape[1]:,} points reduced to the task's {record['num_points']:,} by "
                  "farthest point sampling")
        prediction = bank.predict(name, points, batch_size=args.batch, views=args.views,
                                  longer="fps" if given is not None else "first")
        seconds = time.perf_counter() - start
        class_names = record.get("class_names")
        if not class_names and file_names and len(file_names) == record["num_classes"]:
            class_names = list(file_names)  # tasks whose names come with the data (few-shot, ShapeNet-55)
        confidence = prediction.probabilities.max(axis=1)
        swapped = "swapped in" if bank.swaps > swaps else "already active"
        print(f"\n{name}: task {record['task']}, {record['num_classes']} classes; adapter {swapped}; "
              f"{len(prediction.labels)} clouds from {where} in {seconds:.2f}s")
        if not args.quiet:
            _print_clouds(prediction.labels, confidence, labels, class_names)
        recorded = record.get("accuracy")
        result = {"task": record["task"], "predicted": prediction.labels.tolist(),
                  "predicted_classes": [class_names[i] for i in prediction.labels] if class_names else None,
                  "confidence": [round(float(c), 6) for c in confidence], "seconds": seconds,
                  "recorded_accuracy": recorded, "accuracy": None}
        recorded_text = f"; recorded at training {recorded:.2f}" if recorded is not None else ""
        if labels is not None:
            result["accuracy"] = accuracy(prediction.labels, labels)
            hits = int((prediction.labels == labels).sum())
            print(f"  accuracy {result['accuracy']:.2f} ({hits}/{len(labels)}){recorded_text}")
        else:
            print(f"  no labels given: no accuracy{recorded_text}")
        payload["tasks"][name] = result
    payload.update(backbone_loads=bank.backbone_loads, adapter_swaps=bank.swaps)
    print(f"\nbackbone built {bank.backbone_loads} time(s); adapters swapped onto it {bank.swaps} time(s)")
    if args.json_path:
        write_json(args.json_path, payload)
    return 0


def _print_clouds(predicted, confidence, labels, class_names) -> None:
    def named(index: int) -> str:
        return f"{index} ({class_names[index]})" if class_names else str(index)

    for row, (label, conf) in enumerate(zip(predicted, confidence)):
        line = f"  cloud {row:>5}: {named(int(label)):<20} p={conf:.3f}"
        if labels is not None:
            truth = int(labels[row])
            line += f"  true {named(truth)}" + ("" if truth == label else "  <- wrong")
        print(line)
