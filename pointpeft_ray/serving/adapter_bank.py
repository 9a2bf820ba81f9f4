"""The adapter bank: one frozen backbone, one small adapter per task.

Layout of a bank directory:
  index.json             format version, the backbone (config, fingerprint, checkpoint
                         path or init seed) and one entry per name: its adapter folder,
                         task, classes, how its test split is evaluated, the accuracy
                         recorded at training, the run's TrainConfig and free metadata
  adapters/NAME-XXXXXXXX/  a copy of the run's adapter directory (adapter_config.json,
                         adapter_weights.pt, memory_bank.arrow when the prompts use one)

The bank holds copies of the adapters, so it outlives the run folders; the frozen
backbone is only referenced (its checkpoint file, or for a run without one the seed
that initialised it) and its fingerprint is checked when the bank is opened.

Writing (`write_adapter_bank`) adds or replaces entries under a lock: every adapter is
copied into a new folder first, then index.json is replaced in one rename, then the
folders no entry refers to any more are removed. A reader therefore sees either the old
index with its folders or the new one with its folders, never a mix.

Reading (`AdapterBank`) builds the backbone once and gives every entry its own small
PEFT modules and head on that same backbone object. The few backbone tensors an adapter
tunes (BitFit biases, cls token, final norm; BatchNorm statistics under the published
frozen_batchnorm='train') are swapped in place when another entry
becomes active: the pre-trained values are restored first, then the entry's own.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import torch

from ..atomic import atomic_directory, atomic_file, atomic_write_text
from ..data.formats.class_names import MODELNET40_CLASSES, SCANOBJECTNN_CLASSES
from ..data.synthetic import CLASS_NAMES
from ..data.tasks import get_task, load_task_split
from ..data.transforms import Voting
from ..engine.build import resolve_device
from ..engine.config import TrainConfig
from ..engine.loop import voted_logits
from ..errors import CheckpointError, DataFormatError, PointPEFTError
from ..file_names import (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, BANK_ADAPTERS_DIR, BANK_INDEX_FILE,
                          BANK_LOCK_FILE, MEMORY_BANK_FILE)
from ..models.backbone import BackboneConfig, PointMAEBackbone
from ..models.checkpoint import fingerprint_tensors, load_checkpoint
from ..models.peft.adapter_io import read_adapter_config
from ..models.peft.config import PointPEFTConfig
from ..models.peft.model import PointPEFTModel, trainable_backbone_names

ADAPTER_BANK_FORMAT = "pointpeft-adapter-bank"
ADAPTER_BANK_FORMAT_VERSION = 1
RESERVED_NAMES = ("all",)  # `predict --task all` means every entry
# Backbone settings that do not change what the frozen backbone computes in eval mode.
TRAINING_ONLY_BACKBONE_KEYS = ("drop_path_rate",)
_ENTRY_KEYS = {"adapter": str, "task": str, "num_classes": int, "num_points": int, "voting_views": int,
               "eval_seed": int, "eval_batch_size": int}


class AdapterBankError(CheckpointError):
    """An adapter bank (its index, an adapter in it, or its backbone) cannot be written or read."""


@dataclass
class BankEntry:
    """One adapter to put in a bank: a finished PEFT run's adapter folder and its record."""

    name: str  # unique in the bank, e.g. "clean" or "synth_objbg-best"
    adapter_dir: str | Path  # RUN_DIR/best/adapter
    config: Any  # the run's TrainConfig, its dict, or its JSON text (the tasks.parquet column)
    accuracy: float | None = None  # test accuracy recorded at training (best_accuracy), in %
    metadata: dict = field(default_factory=dict)  # free: task_name, trainable_params, variant, ...
    class_names: list[str] | None = None  # default: the task's fixed class names, where it has them


class Prediction(NamedTuple):
    labels: np.ndarray  # (N,) int64: the predicted class of each cloud
    probabilities: np.ndarray  # (N, K) float32: softmax of the (view-averaged) logits


@dataclass
class PointsFile:
    points: np.ndarray  # (N, P, 3) float32
    labels: np.ndarray | None = None  # (N,) int64
    class_names: list[str] | None = None


# --------------------------------------------------------------------------- writing


def entries_from_task_rows(rows: Iterable[Any], prefix: str = "") -> list[BankEntry]:
    """Bank entries for the completed PEFT rows (with an adapter) of `run_tasks` or
    tasks.parquet; each is named `prefix + row["task"]`. Other rows are skipped."""
    entries = []
    for row in rows:
        get = row.get
        if get("status") != "completed" or (get("mode") or "peft") != "peft" or not _present(get("adapter_path")):
            continue
        metadata = {key: _plain(get(key)) for key in ("task_name", "variant", "best_epoch", "epochs",
                                                      "trainable_params", "total_params")
                    if _present(get(key))}
        accuracy = get("best_accuracy")
        entries.append(BankEntry(prefix + str(get("task")), get("adapter_path"), get("config"),
                                 float(accuracy) if _present(accuracy) else None, metadata))
    return entries


def write_adapter_bank(directory: str | Path, entries: Iterable[BankEntry], *, replace: bool = False,
                       verify_backbone: bool = True) -> Path:
    """Copy the entries' adapters into the bank at `directory` and (re)write its index.

    Entries already in the bank under other names are kept (a rerun of a job updates
    its entries); with `replace`, the bank holds exactly `entries` afterwards. Every
    entry, new and kept, must sit on the same frozen backbone. `verify_backbone`
    rebuilds the backbone from its checkpoint (or seed) and checks its fingerprint now,
    rather than when the bank is first opened. Returns the index path.
    """
    from filelock import FileLock

    directory = Path(directory)
    prepared = [_prepare_entry(entry) for entry in entries]
    if not prepared:
        raise AdapterBankError(f"{directory}: no entries to write")
    names = [p["name"] for p in prepared]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AdapterBankError(f"{directory}: entry names must be unique; repeated: {duplicates}")
    backbone = _one_backbone(directory, {p["name"]: p["backbone"] for p in prepared})
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / BANK_INDEX_FILE
    with FileLock(str(directory / BANK_LOCK_FILE)):
        kept = {}
        if index_path.exists() and not replace:
            old = read_bank_index(directory)
            kept = {n: r for n, r in old["entries"].items() if n not in names}
            if kept:
                backbone = _one_backbone(directory, {**{n: old["backbone"] for n in kept},
                                                     **{p["name"]: backbone for p in prepared}})
        if verify_backbone:
            _build_backbone(backbone, f"{directory}: new entries {names}")
        adapters = directory / BANK_ADAPTERS_DIR
        created = []
        try:
            records = dict(kept)
            for entry in prepared:
                folder = adapters / f"{_slug(entry['name'])}-{secrets.token_hex(4)}"
                _copy_adapter(entry["source"], folder)
                created.append(folder)
                records[entry["name"]] = {**entry["record"], "adapter": f"{BANK_ADAPTERS_DIR}/{folder.name}"}
            index = {"format": ADAPTER_BANK_FORMAT, "format_version": ADAPTER_BANK_FORMAT_VERSION,
                     "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backbone": backbone,
                     "entries": {name: records[name] for name in sorted(records)}}
            atomic_write_text(index_path, json.dumps(index, indent=2, sort_keys=True, allow_nan=False) + "\n")
        except BaseException:
            for folder in created:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        _remove_unreferenced(adapters, {Path(r["adapter"]).name for r in records.values()})
    return index_path


def _prepare_entry(entry: BankEntry) -> dict:
    name = _check_name(entry.name)
    where = f"entry {name!r}"
    source = Path(entry.adapter_dir).expanduser()
    try:
        meta = read_adapter_config(source)
    except CheckpointError as err:
        raise AdapterBankError(f"{where}: {err}") from None
    if not (source / ADAPTER_WEIGHTS_FILE).is_file():
        raise AdapterBankError(f"{where}: {source}: missing {ADAPTER_WEIGHTS_FILE}")
    config = _train_config(entry.config, where)
    if config.mode != "peft":
        raise AdapterBankError(f"{where}: a bank holds PEFT adapters; the run's mode is {config.mode!r}")
    if PointPEFTConfig(**meta["peft_config"]).uses_bank and not (source / MEMORY_BANK_FILE).is_file():
        raise AdapterBankError(f"{where}: {source}: the prompts use a memory bank but {MEMORY_BANK_FILE} is missing")
    task = get_task(config.data.task).with_options(**config.data.options)
    class_names = list(entry.class_names) if entry.class_names is not None else _fixed_class_names(task)
    if class_names is not None and len(class_names) != meta["num_classes"]:
        raise AdapterBankError(f"{where}: {len(class_names)} class names for an adapter of "
                               f"{meta['num_classes']} classes")
    checkpoint = config.model.checkpoint
    backbone = {"fingerprint": meta["backbone_fingerprint"], "config": meta["backbone_config"],
                "checkpoint": str(Path(checkpoint).expanduser().resolve()) if checkpoint else None,
                # Tensors a checkpoint lacks (Point-MAE's has no cls token) come from the
                # run's seed, and the memory bank was built with them: part of the backbone.
                "init_seed": config.seed}
    record = {
        "task": task.name, "task_options": dict(config.data.options), "num_classes": meta["num_classes"],
        "class_names": class_names, "num_points": task.num_points,
        # How the training loop evaluated the test split (engine.loop.train / evaluate).
        "voting_views": config.data.voting_views or task.voting_views, "eval_seed": config.seed,
        "eval_batch_size": config.optim.batch_size,
        "accuracy": _finite_or_none(entry.accuracy),
        "trainable_parameters": meta.get("trainable_parameters"),
        "metadata": {str(k): _plain(v) for k, v in (entry.metadata or {}).items()},
        "config": config.model_dump(mode="json"), "source": str(source.resolve()),
        "added_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return {"name": name, "source": source, "backbone": backbone, "record": record}


def _train_config(config: Any, where: str):
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, (str, bytes)):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as err:
            raise AdapterBankError(f"{where}: config is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise AdapterBankError(f"{where}: config must be a TrainConfig, its dict or its JSON, "
                               f"got {type(config).__name__}")
    return TrainConfig.from_dict(config, where=f"{where}: config")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise AdapterBankError(f"bank entry names must be non-empty strings without surrounding spaces, got {name!r}")
    if name in RESERVED_NAMES:
        raise AdapterBankError(f"bank entry name {name!r} is reserved (predict --task {name} means every entry)")
    return name


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "entry"


def _fixed_class_names(task) -> list[str] | None:
    """Class names the task fixes whatever the data (None where they come from the data)."""
    fixed = {"synthetic": CLASS_NAMES, "scanobjectnn": SCANOBJECTNN_CLASSES,
             "modelnet40": MODELNET40_CLASSES, "modelnet40_h5": MODELNET40_CLASSES}
    names = fixed.get(task.family)
    return list(names) if names is not None else None


def _one_backbone(directory: Path, backbones: dict[str, dict]) -> dict:
    """The one backbone all `backbones` (entry name -> backbone section) share, else an
    error naming which entries sit on which."""
    groups: dict[tuple, list[str]] = {}
    for name, section in backbones.items():
        eval_config = {k: v for k, v in section["config"].items() if k not in TRAINING_ONLY_BACKBONE_KEYS}
        key = (section["fingerprint"], json.dumps(eval_config, sort_keys=True), section.get("init_seed"))
        groups.setdefault(key, []).append(name)
    if len(groups) > 1:
        parts = []
        for (fingerprint, config, seed), names in groups.items():
            section = backbones[names[0]]
            origin = f"{section['checkpoint'] or 'no checkpoint'}, init seed {seed}"
            parts.append(f"{names} on backbone {fingerprint[:12]} ({origin}; config {config})")
        raise AdapterBankError(f"{directory}: a bank serves one frozen backbone, but the entries differ: "
                               + "; ".join(parts) + ". Put them in separate banks.")
    sections = list(backbones.values())
    # The same weights may be named by several checkpoint paths: prefer the newest entries'.
    return next((s for s in reversed(sections) if s["checkpoint"]), sections[-1])


def _copy_adapter(source: Path, target: Path) -> None:
    with atomic_directory(target) as staging:
        for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MEMORY_BANK_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)


def _remove_unreferenced(adapters: Path, referenced: set[str]) -> None:
    """Folders of replaced entries, and leftovers of an interrupted writer (the lock is held)."""
    if not adapters.is_dir():
        return
    for path in adapters.iterdir():
        if path.name not in referenced and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _finite_or_none(value: Any) -> float | None:
    """As a float, or None when missing or not finite (NaN is not valid JSON in index.json)."""
    number = None if value is None else float(value)
    return number if number is not None and math.isfinite(number) else None


def _present(value: Any) -> bool:
    """Not None and not NaN (a missing value in a table row)."""
    if value is None:
        return False
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    return True


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return str(value)


# --------------------------------------------------------------------------- reading


def read_bank_index(directory: str | Path) -> dict:
    """index.json of a bank, checked: errors name the file and the key."""
    path = Path(directory) / BANK_INDEX_FILE
    if not path.is_file():
        raise AdapterBankError(f"{directory}: not an adapter bank (no {BANK_INDEX_FILE})")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterBankError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(index, dict):
        raise AdapterBankError(f"{path}: expected a JSON object at the top level, found {type(index).__name__}")
    if index.get("format") != ADAPTER_BANK_FORMAT:
        raise AdapterBankError(f"{path}: 'format' is {index.get('format')!r}, expected {ADAPTER_BANK_FORMAT!r}")
    if index.get("format_version") != ADAPTER_BANK_FORMAT_VERSION:
        raise AdapterBankError(f"{path}: 'format_version' is {index.get('format_version')!r}; this version "
                               f"reads {ADAPTER_BANK_FORMAT_VERSION}")
    backbone = _key(index, "backbone", dict, path, "")
    _key(backbone, "fingerprint", str, path, "backbone.")
    _key(backbone, "config", dict, path, "backbone.")
    checkpoint, seed = backbone.get("checkpoint"), backbone.get("init_seed")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise AdapterBankError(f"{path}: 'backbone.checkpoint' must be a path or null, found {checkpoint!r}")
    if checkpoint is None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise AdapterBankError(f"{path}: 'backbone' needs a 'checkpoint' path or an integer 'init_seed'")
    entries = _key(index, "entries", dict, path, "")
    if not entries:
        raise AdapterBankError(f"{path}: 'entries' is empty")
    for name, record in entries.items():
        where = f"entries.{name}"
        if not isinstance(record, dict):
            raise AdapterBankError(f"{path}: '{where}' must be an object, found {type(record).__name__}")
        for key, kind in _ENTRY_KEYS.items():
            _key(record, key, kind, path, f"{where}.")
        adapter = Path(record["adapter"])
        if adapter.is_absolute() or ".." in adapter.parts:
            raise AdapterBankError(f"{path}: '{where}.adapter' must be a folder inside the bank, found {str(adapter)!r}")
        names = record.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != record["num_classes"]):
            raise AdapterBankError(f"{path}: '{where}.class_names' must list {record['num_classes']} names")
        accuracy = record.get("accuracy")
        if accuracy is not None and (not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool)):
            raise AdapterBankError(f"{path}: '{where}.accuracy' must be a number or null, found {accuracy!r}")
    return index


def _key(mapping: dict, key: str, kind: type, path: Path, prefix: str):
    if key not in mapping:
        raise AdapterBankError(f"{path}: missing key '{prefix}{key}'")
    value = mapping[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AdapterBankError(f"{path}: '{prefix}{key}' must be {kind.__name__}, found {value!r}")
    return value


def backbone_fingerprint(backbone) -> str:
    """The fingerprint PointPEFTModel gives this backbone: its tensors but the tunable ones."""
    tunable = set(trainable_backbone_names(backbone, PointPEFTConfig()))
    return fingerprint_tensors((k, v) for k, v in backbone.state_dict().items() if k not in tunable)


def _build_backbone(section: dict, where: str):
    """The frozen backbone of a bank section, on the CPU, its fingerprint checked."""
    config = BackboneConfig.from_dict(section["config"], where=f"{where}: backbone.config")
    checkpoint = section.get("checkpoint")
    # Building draws from torch's RNG: keep the caller's stream as it was.
    with torch.random.fork_rng(devices=[]):
        # As engine.loop.build_seeded_model builds a run: seeded, then the checkpoint loaded
        # over what it holds (tensors it lacks keep their seeded values).
        if section.get("init_seed") is not None:
            torch.manual_seed(section["init_seed"])
        backbone = PointMAEBackbone(config)
        if checkpoint:
            try:
                load_checkpoint(backbone, checkpoint)
            except CheckpointError as err:
                raise AdapterBankError(f"{where}: backbone checkpoint: {err}") from None
    fingerprint = backbone_fingerprint(backbone)
    if fingerprint != section["fingerprint"]:
        origin = f"checkpoint {checkpoint}" if checkpoint else f"init seed {section['init_seed']}"
        raise AdapterBankError(
            f"{where}: the backbone from {origin} has fingerprint {fingerprint[:12]}..., but the adapters were "
            f"trained on {section['fingerprint'][:12]}... (was the checkpoint overwritten, e.g. by a new "
            "pre-training run?); restore those weights or fine-tune and write the bank again"
        )
    return backbone.eval()


class AdapterBank:
    """An opened bank: the frozen backbone built once, each entry's adapter swapped onto it.

    `model_for(name)` gives that entry's PointPEFTModel (built on first use, then kept:
    its prompts, adapters and head are its own, the backbone is the bank's), and makes it
    the active one. `predict(name, points)` classifies clouds as the training loop's
    evaluation did.
    """

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu"):
        self.directory = Path(directory)
        self.index_path = self.directory / BANK_INDEX_FILE
        self.index = read_bank_index(self.directory)
        for name, record in self.index["entries"].items():
            folder = self.directory / record["adapter"]
            if not folder.is_dir():
                raise AdapterBankError(f"{self.index_path}: entry {name!r}: adapter folder {folder} is missing "
                                       "(was the bank changed since it was written?)")
        self.device = resolve_device(str(device)) if isinstance(device, str) else device
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise PointPEFTError(f"device {device!r}: no CUDA device is available")
        start = time.perf_counter()
        self.backbone = _build_backbone(self.index["backbone"], str(self.index_path)).to(self.device)
        self.backbone_seconds = time.perf_counter() - start
        self.backbone_loads = 1
        self.swaps = 0  # times a different entry's tensors were put on the backbone
        self._models: dict[str, tuple] = {}
        self._active: str | None = None

    @classmethod
    def open(cls, directory: str | Path, device: str | torch.device = "cpu") -> "AdapterBank":
        return cls(directory, device)

    # ---- entries -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.index["entries"])

    def entry(self, name: str) -> dict:
        entries = self.index["entries"]
        if name not in entries:
            raise AdapterBankError(f"{self.directory}: no entry {name!r}; the bank holds: {', '.join(entries)}")
        return entries[name]

    def resolve_names(self, names: Iterable[str]) -> list[str]:
        """`names` checked against the bank, 'all' expanded to every entry; order kept, repeats dropped."""
        out: list[str] = []
        for name in names:
            if name == "all":
                expanded = self.names
            else:
                self.entry(name)  # an unknown name: the error lists the bank's entries
                expanded = [name]
            out += [item for item in expanded if item not in out]
        return out

    # ---- models --------------------------------------------------------------
    def model_for(self, name: str):
        """The entry's PointPEFTModel in eval mode, active on the shared backbone."""
        record = self.entry(name)
        if name not in self._models:
            folder = self.directory / record["adapter"]
            # Its fingerprint is checked against the pre-trained backbone, and loading
            # writes the adapter's backbone tensors.
            self._set_backbone({})
            self._active = None
            try:
                with torch.random.fork_rng(devices=[]):  # fresh modules draw before the load
                    model = PointPEFTModel.from_adapter(self.backbone, folder)
            except PointPEFTError as err:
                raise AdapterBankError(f"{self.index_path}: entry {name!r}: {err}") from None
            if model.num_classes != record["num_classes"]:
                raise AdapterBankError(f"{self.index_path}: entry {name!r}: the index says "
                                       f"{record['num_classes']} classes, the adapter has {model.num_classes}")
            model.to(self.device).eval()
            tuned = set(model.tuned_backbone)  # trained tensors, and BatchNorm statistics where they moved
            overrides = {key: t.detach().clone() for key, t in self.backbone.state_dict().items() if key in tuned}
            self._models[name] = (model, overrides)
        model, overrides = self._models[name]
        if self._active != name:
            self._set_backbone(overrides)
            self._active = name
            self.swaps += 1
        return model.eval()

    def _set_backbone(self, overrides: dict[str, torch.Tensor]) -> None:
        tensors = self.backbone.state_dict(keep_vars=True)
        # Kept by the first adapter built on this backbone; none yet: still pristine.
        reference = getattr(self.backbone, "pretrained_reference", None)
        with torch.no_grad():
            # Back to the pre-trained values first: this entry may tune fewer tensors.
            for key, value in (reference.tensors().items() if reference is not None else ()):
                tensors[key].copy_(value)
            for key, value in overrides.items():
                tensors[key].copy_(value)

    # ---- prediction ----------------------------------------------------------
    def preprocess(self, name: str, points, all_points: bool = False, longer: str = "first") -> torch.Tensor:
        """Clouds (N, P, 3) or one (P, 3) as the test loader feeds them: clouds longer
        than the task's `num_points` keep their first `num_points` (longer="first": the
        task's prepared clouds are stored in FPS order) or are reduced by farthest point
        sampling (longer="fps": any other clouds); every point with `all_points`
        (published voting draws its own). Nothing else: centring and scaling happen when
        a task's data is prepared, so pass clouds as the task's cache holds them."""
        record = self.entry(name)
        clouds = torch.from_numpy(np.array(points, dtype=np.float32))  # a copy: memory-mapped splits are read-only
        if clouds.ndim == 2:
            clouds = clouds.unsqueeze(0)
        if clouds.ndim != 3 or clouds.shape[-1] != 3:
            raise DataFormatError(f"points must be (clouds, points, 3) or (points, 3), found {tuple(clouds.shape)}")
        if clouds.shape[0] == 0:
            raise DataFormatError("no clouds to predict")
        bad = ~torch.isfinite(clouds).all(dim=2).all(dim=1)
        if bad.any():
            raise DataFormatError(f"{int(bad.sum())} clouds hold NaN/inf points (first: cloud "
                                  f"{int(bad.nonzero()[0, 0])})")
        conf = self.backbone.config
        if clouds.shape[1] < max(conf.num_group, conf.group_size):
            raise DataFormatError(f"clouds of {clouds.shape[1]} points are too small for this backbone "
                                  f"(num_group {conf.num_group}, group_size {conf.group_size})")
        if clouds.shape[1] > record["num_points"] and not all_points:
            if longer == "fps":
                from ..models.ops import farthest_point_sample, gather_points

                clouds = gather_points(clouds, farthest_point_sample(clouds, record["num_points"]))
            else:
                clouds = clouds[:, :record["num_points"]]
        return clouds.contiguous()

    def predict(self, name: str, points, batch_size: int | None = None, views: int | None = None,
                seed: int | None = None, longer: str = "first") -> Prediction:
        """Classify clouds with entry `name`. Defaults repeat the run's evaluation: its batch
        size, its test-time voting views (made as its recipe makes them, averaged) and seed.
        `longer`: how clouds longer than the task's point count are reduced (preprocess)."""
        record = self.entry(name)
        batch_size = batch_size or record["eval_batch_size"]
        views = views or record["voting_views"]
        if batch_size < 1 or views < 1:
            raise PointPEFTError(f"batch size and views must be at least 1, got {batch_size} and {views}")
        voting = Voting(views, (record.get("config") or {}).get("recipe", "ours"), record["num_points"])
        clouds = self.preprocess(name, points, all_points=voting.draws_points, longer=longer)
        model = self.model_for(name)
        gen = torch.Generator().manual_seed(record["eval_seed"] if seed is None else seed)
        outputs = []
        with torch.no_grad():
            for start in range(0, clouds.shape[0], batch_size):
                batch = clouds[start:start + batch_size].to(self.device)
                outputs.append(voted_logits(model, batch, voting, gen).cpu())
        logits = torch.cat(outputs)
        return Prediction(logits.argmax(-1).numpy(), logits.softmax(-1).numpy())

    def load_test_split(self, name: str):
        """The entry's own test split, read (or prepared) with its run's data settings."""
        record = self.entry(name)
        if not isinstance(record.get("config"), dict):
            raise AdapterBankError(f"{self.index_path}: entry {name!r} has no run config to find its test split")
        data = TrainConfig.from_dict(record["config"], where=f"{self.index_path}: entries.{name}.config").data
        task = get_task(data.task).with_options(**data.options)
        return load_task_split(task, "test", data.root, data.cache_dir, data.allow_pickle, progress=False)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Overall accuracy in %, as engine.loop.evaluate computes it."""
    return float(100.0 * float((np.asarray(predicted) == np.asarray(labels)).sum()) / max(1, len(labels)))


# --------------------------------------------------------------------------- points files


MAX_POINTS_PER_CLOUD = 1_000_000  # far above any dataset's; beyond it, downsample before predicting


def read_points_file(path: str | Path) -> PointsFile:
    """`.npy`: an array (N, P, 3) or (P, 3) of real numbers. `.npz`: `points` as above,
    optionally `labels` (N,) integers and `class_names` (K,) strings."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"points file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataFormatError(f"{path}: unknown points file type {suffix or '(none)'!r}; use .npy or .npz")
    try:
        if suffix == ".npy":
            found, arrays = ["points"], {"points": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                found = archive.files
                arrays = {name: archive[name] for name in ("points", "labels", "class_names") if name in found}
    except (ValueError, OSError, EOFError) as err:
        raise DataFormatError(f"{path}: not a readable numpy file ({err})") from None
    if "points" not in arrays:
        raise DataFormatError(f"{path}: no 'points' array (found: {', '.join(found) or 'none'})")
    points, labels = arrays["points"], arrays.get("labels")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    if points.ndim == 2:
        points = points[None]
    real = np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)
    if points.ndim != 3 or points.shape[-1] != 3 or not real:
        raise DataFormatError(f"{path}: 'points' must be real numbers shaped (clouds, points, 3) or (points, 3), "
                              f"found {points.dtype} {points.shape}")
    if points.shape[1] > MAX_POINTS_PER_CLOUD:
        raise DataFormatError(f"{path}: clouds of {points.shape[1]:,} points; at most {MAX_POINTS_PER_CLOUD:,} are "
                              "read: downsample them first (the model takes a few thousand)")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataFormatError(f"{path}: 'labels' must be integers, found {labels.dtype}")
        if labels.shape[0] != points.shape[0]:
            raise DataFormatError(f"{path}: {points.shape[0]} clouds but {labels.shape[0]} labels")
        labels = labels.astype(np.int64)
    return PointsFile(np.ascontiguousarray(points, dtype=np.float32), labels, names)


def write_points_file(path: str | Path, points: np.ndarray, labels: np.ndarray | None = None,
                      class_names: Iterable[str] | None = None) -> Path:
    """An `.npz` points file (atomically), e.g. of a task's test split."""
    path = Path(path)
    arrays = {"points": np.asarray(points, dtype=np.float32)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if class_names is not None:
        arrays["class_names"] = np.asarray(list(class_names), dtype=str)
    with atomic_file(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return path
