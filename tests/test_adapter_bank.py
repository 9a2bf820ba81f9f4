"""The adapter bank on real runs: two tiny PEFT tasks fine-tuned with run_tasks on a local
Ray, their adapters written into a bank, then served through `pointpeft-ray predict`."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pointpeft_ray.cli import main
from pointpeft_ray.data.tasks import get_task, load_task_split
from pointpeft_ray.distributed.multitask import TaskRun, run_tasks
from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.engine.loop import build_seeded_model
from pointpeft_ray.file_names import BANK_INDEX_FILE
from pointpeft_ray.models.backbone import PointMAEBackbone
from pointpeft_ray.models.peft.model import PointPEFTModel
from pointpeft_ray.models.presets import get_preset
from pointpeft_ray.pretrain.checkpoint import write_pretrain_checkpoint
from pointpeft_ray.serving import (AdapterBank, AdapterBankError, BankEntry, entries_from_task_rows,
                                   read_points_file, write_adapter_bank, write_points_file)
from pointpeft_ray.serving.adapter_bank import read_bank_index

SMALL = {"samples_per_class": 4, "points": 256}
TASKS = {"clean": "synth/clean", "objbg": "synth/objbg"}


def _save_backbone(path, seed):
    """A tiny backbone in the published pretrain.pth layout (stands in for pre-training).
    As in Point-MAE's, it has no cls token: runs initialise it from their seed."""
    torch.manual_seed(seed)
    backbone = PointMAEBackbone(get_preset("tiny").backbone)
    state = {f"MAE_encoder.{k}": v for k, v in backbone.state_dict().items() if k not in ("cls_token", "cls_pos")}
    return str(write_pretrain_checkpoint(state, path, epoch=1))


def _config(root, task, checkpoint, **changes) -> TrainConfig:
    return TrainConfig.from_dict({
        "mode": "peft", "model": {"preset": "tiny", "checkpoint": checkpoint},
        "data": {"task": task, "cache_dir": str(root / "cache"), "options": SMALL},
        "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 15, "lr": 5e-3}, **changes,
    })


@pytest.fixture(scope="module")
def trained(local_ray, tmp_path_factory):
    """Two tasks fine-tuned in parallel on one frozen backbone; their table rows."""
    root = tmp_path_factory.mktemp("bank-runs")
    checkpoint = _save_backbone(root / "pretrain.pth", seed=7)
    runs = [TaskRun(label, _config(root, task, checkpoint)) for label, task in TASKS.items()]
    # objbg also checks voting: the bank must repeat the evaluation's augmented views
    runs[1] = TaskRun("objbg", runs[1].config.replace(data={**runs[1].config.data.model_dump(), "voting_views": 2}))
    run_tasks(runs, root / "tasks")
    table = pd.read_parquet(root / "tasks" / "tasks.parquet")
    assert sorted(table.status) == ["completed", "completed"], table.get("error")
    return root, checkpoint, table


@pytest.fixture
def bank(trained, tmp_path):
    _, _, table = trained
    directory = tmp_path / "bank"
    write_adapter_bank(directory, entries_from_task_rows(table.to_dict("records")))
    return directory


def _entries(table):
    """The table's bank entries, clean first (rows come in the order the tasks finished)."""
    return sorted(entries_from_task_rows(table.to_dict("records")), key=lambda entry: entry.name)


def _cli(capsys, *argv):
    code = main(["predict", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _test_split(trained, label):
    root, checkpoint, _ = trained
    config = _config(root, TASKS[label], checkpoint)
    task = get_task(config.data.task).with_options(**config.data.options)
    return load_task_split(task, "test", None, config.data.cache_dir, progress=False)


def test_predicting_the_test_split_gives_the_recorded_accuracy(trained, bank, tmp_path, capsys):
    _, _, table = trained
    recorded = table.set_index("task").best_accuracy
    for label in TASKS:
        split = _test_split(trained, label)
        points_file = write_points_file(tmp_path / f"{label}.npz", split.points, split.labels)
        out_json = tmp_path / f"{label}.json"
        code, out, err = _cli(capsys, "--bank", str(bank), "--task", label, str(points_file),
                              "--device", "cpu", "--json", str(out_json))
        assert code == 0, err
        result = json.loads(out_json.read_text())["tasks"][label]
        assert abs(result["accuracy"] - recorded[label]) < 1e-6, (label, result["accuracy"], recorded[label])
        assert len(result["predicted"]) == len(split.labels) and len(result["predicted_classes"]) == len(split.labels)
        assert f"accuracy {recorded[label]:.2f}" in out and "cloud     0:" in out

    # every entry, each on its own test split, one backbone: the adapters are swapped
    out_json = tmp_path / "all.json"
    code, out, err = _cli(capsys, "--bank", str(bank), "--task", "all", "--test-split", "--quiet",
                          "--device", "cpu", "--json", str(out_json))
    assert code == 0, err
    payload = json.loads(out_json.read_text())
    assert payload["backbone_loads"] == 1 and payload["adapter_swaps"] == 2
    for label in TASKS:
        assert abs(payload["tasks"][label]["accuracy"] - recorded[label]) < 1e-6
    assert "cloud " not in out and "backbone built 1 time(s); adapters swapped onto it 2 time(s)" in out

    # not only the accuracy: the test loss recorded at the best epoch comes back too,
    # so every cloud's probabilities (objbg: averaged over its voting views) are the run's
    root = trained[0]
    epochs = pd.read_parquet(root / "tasks" / "epochs.parquet").set_index(["trial_id", "epoch"])
    served = AdapterBank.open(bank, device="cpu")
    for label in TASKS:
        split = _test_split(trained, label)
        probabilities = served.predict(label, split.points).probabilities
        loss = -np.log(probabilities[np.arange(len(split.labels)), split.labels]).mean()
        best_epoch = int(table.set_index("task").best_epoch[label])
        assert loss == pytest.approx(epochs.val_loss[(label, best_epoch)], rel=1e-5), label


def test_the_backbone_is_shared_and_swapping_restores_each_adapter(trained, bank):
    root, checkpoint, table = trained
    served = AdapterBank.open(bank, device="cpu")
    clean = _test_split(trained, "clean").points[:10]
    first = served.predict("clean", clean)
    objbg_model = served.model_for("objbg")
    clean_model = served.model_for("clean")
    assert clean_model.backbone is objbg_model.backbone is served.backbone
    own = dict(clean_model.named_parameters())
    for name, param in objbg_model.backbone.named_parameters():
        assert own[f"backbone.{name}"].data_ptr() == param.data_ptr(), name  # one storage, not a copy
    assert clean_model.cls_head_finetune is not objbg_model.cls_head_finetune

    # objbg active, then clean again: the clean prediction does not change
    served.predict("objbg", clean)
    again = served.predict("clean", clean)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_allclose(first.probabilities, again.probabilities, atol=1e-6)
    assert served.backbone_loads == 1 and served.swaps == 5  # clean, objbg, clean, objbg, clean

    # and equals a model built on its own from the run's folder
    row = table.set_index("task").loc["clean"]
    config = _config(root, "synth/clean", checkpoint)
    alone = PointPEFTModel.from_adapter(build_seeded_model(config, 15).backbone,
                                        row.adapter_path).eval()
    with torch.no_grad():
        expected = alone(torch.from_numpy(np.array(clean))).softmax(-1).numpy()
    np.testing.assert_allclose(again.probabilities, expected, atol=1e-5)
    assert abs(again.probabilities.sum(1) - 1).max() < 1e-5


def test_points_files(trained, tmp_path):
    split = _test_split(trained, "clean")
    one = tmp_path / "one.npy"
    np.save(one, split.points[0])
    loaded = read_points_file(one)
    assert loaded.points.shape == (1, 256, 3) and loaded.labels is None
    with pytest.raises(Exception, match="no 'points' array"):
        np.savez(tmp_path / "bad.npz", clouds=split.points)
        read_points_file(tmp_path / "bad.npz")
    with pytest.raises(Exception, match="use .npy or .npz"):
        (tmp_path / "clouds.txt").write_text("1 2 3")
        read_points_file(tmp_path / "clouds.txt")
    with pytest.raises(Exception, match="60 clouds but 3 labels"):
        np.savez(tmp_path / "short.npz", points=split.points, labels=np.arange(3))
        read_points_file(tmp_path / "short.npz")
    with pytest.raises(Exception, match=r"must be real numbers .* found complex64"):
        np.save(tmp_path / "complex.npy", split.points[:2].astype(np.complex64))
        read_points_file(tmp_path / "complex.npy")
    with pytest.raises(Exception, match="clouds of 1,000,001 points; at most 1,000,000 are read: downsample"):
        np.save(tmp_path / "huge.npy", np.zeros((1_000_001, 3), dtype=np.float16))
        read_points_file(tmp_path / "huge.npy")


def test_longer_clouds_from_a_file_are_reduced_by_fps_and_said_so(trained, bank, tmp_path, capsys):
    """A points file's clouds longer than the task's are reduced by farthest point sampling
    (never silently cut to their first points), and the output says so."""
    from pointpeft_ray.models.ops import farthest_point_sample, gather_points

    split = _test_split(trained, "clean")
    torch.manual_seed(0)
    extra = torch.rand(4, 300, 3) * 2 - 1  # 256 task points plus 300 more, in front
    clouds = torch.cat([extra, torch.from_numpy(np.array(split.points[:4]))], dim=1)
    points_file = write_points_file(tmp_path / "long.npz", clouds.numpy(), split.labels[:4])
    code, out, _ = _cli(capsys, "--bank", str(bank), "--task", "clean", str(points_file), "--device", "cpu",
                        "--quiet")
    assert code == 0 and "clouds of 556 points reduced to the task's 256 by farthest point sampling" in out
    opened = AdapterBank.open(bank, device="cpu")
    expected = gather_points(clouds, farthest_point_sample(clouds, 256))
    torch.testing.assert_close(opened.preprocess("clean", clouds.numpy(), longer="fps"), expected)
    assert torch.equal(opened.preprocess("clean", clouds.numpy())[:, :256], clouds[:, :256])  # stored order


def test_clear_errors(trained, bank, tmp_path, capsys):
    split = _test_split(trained, "clean")
    points_file = write_points_file(tmp_path / "clean.npz", split.points, split.labels)

    code, _, err = _cli(capsys, "--bank", str(bank), "--task", "cleen", str(points_file), "--device", "cpu")
    assert code == 2 and "no entry 'cleen'" in err and "clean, objbg" in err
    code, _, err = _cli(capsys, "--bank", str(bank), "--task", "clean", "--device", "cpu")
    assert code == 2 and "POINTS_FILE or --test-split" in err
    bad_labels = write_points_file(tmp_path / "labels.npz", split.points, np.full(len(split.labels), 99))
    code, _, err = _cli(capsys, "--bank", str(bank), "--task", "clean", str(bad_labels), "--device", "cpu")
    assert code == 2 and "outside the 15 classes of entry 'clean'" in err

    index_path = bank / BANK_INDEX_FILE
    good = index_path.read_text()
    index_path.write_text(good[:50])
    with pytest.raises(AdapterBankError, match="index.json: invalid JSON"):
        AdapterBank.open(bank)
    broken = json.loads(good)
    del broken["entries"]["objbg"]["num_points"]
    index_path.write_text(json.dumps(broken))
    with pytest.raises(AdapterBankError, match="missing key 'entries.objbg.num_points'"):
        AdapterBank.open(bank)
    index_path.write_text(json.dumps({**json.loads(good), "format_version": 99}))
    code, _, err = _cli(capsys, "--bank", str(bank), "--task", "clean", str(points_file))
    assert code == 2 and "'format_version' is 99" in err
    index_path.write_text(good)
    with pytest.raises(AdapterBankError, match="not an adapter bank"):
        AdapterBank.open(tmp_path)

    folder = bank / json.loads(good)["entries"]["objbg"]["adapter"]
    shutil.rmtree(folder)
    with pytest.raises(AdapterBankError, match=r"entry 'objbg': adapter folder .* is missing"):
        AdapterBank.open(bank)


def test_mismatched_backbones_are_refused(trained, tmp_path):
    root, checkpoint, table = trained
    entries = _entries(table)
    # an adapter trained on other weights: its recorded fingerprint differs
    other = tmp_path / "other-adapter"
    shutil.copytree(entries[1].adapter_dir, other)
    meta = json.loads((other / "adapter_config.json").read_text())
    meta["backbone_fingerprint"] = "0" * 32
    (other / "adapter_config.json").write_text(json.dumps(meta))
    mixed = [entries[0], BankEntry("other", other, entries[1].config, 50.0)]
    with pytest.raises(AdapterBankError, match=rf"one frozen backbone.*\['{entries[0].name}'\].*\['other'\] on backbone 000000000000"):
        write_adapter_bank(tmp_path / "mixed", mixed)
    assert not (tmp_path / "mixed" / BANK_INDEX_FILE).exists()

    # the checkpoint changed after the bank was written: opening it says so
    bank_dir = tmp_path / "bank"
    write_adapter_bank(bank_dir, entries)
    index = json.loads((bank_dir / BANK_INDEX_FILE).read_text())
    index["backbone"]["checkpoint"] = _save_backbone(tmp_path / "retrained.pth", seed=8)
    (bank_dir / BANK_INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(AdapterBankError, match=r"retrained.pth has fingerprint .* but the adapters were trained on"):
        AdapterBank.open(bank_dir)
    # ...and writing with verification refuses it too
    bad = [BankEntry(e.name, e.adapter_dir, _config(root, TASKS[e.name], str(tmp_path / "retrained.pth")), 1.0)
           for e in entries]
    with pytest.raises(AdapterBankError, match="has fingerprint"):
        write_adapter_bank(tmp_path / "bank2", bad)


def test_rewriting_the_bank_is_atomic_and_updates_entries(trained, bank, monkeypatch):
    _, _, table = trained
    entries = _entries(table)
    index_path = bank / BANK_INDEX_FILE
    before = read_bank_index(bank)
    inode = index_path.stat().st_ino

    # a rerun of one task replaces its entry: new folder, the other entry kept as it was
    rerun = BankEntry("clean", entries[0].adapter_dir, entries[0].config, 12.5, {"variant": "rerun"})
    write_adapter_bank(bank, [rerun])
    after = read_bank_index(bank)
    assert index_path.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert sorted(after["entries"]) == ["clean", "objbg"]
    assert after["entries"]["objbg"] == before["entries"]["objbg"]
    assert after["entries"]["clean"]["accuracy"] == 12.5
    assert after["entries"]["clean"]["metadata"] == {"variant": "rerun"}
    assert after["entries"]["clean"]["adapter"] != before["entries"]["clean"]["adapter"]
    folders = sorted(p.name for p in (bank / "adapters").iterdir())
    assert folders == sorted(r["adapter"].split("/")[1] for r in after["entries"].values())
    assert sorted(os.listdir(bank)) == [".index.lock", "adapters", "index.json"]  # no temporaries

    # a writer that dies while copying leaves the bank as it was
    import pointpeft_ray.serving.adapter_bank as adapter_bank

    copies, copy2 = [], shutil.copy2

    def failing_copy(src, dst):
        copies.append(dst)
        if len(copies) > 4:  # three files per adapter: the second one fails
            raise OSError("disk full")
        return copy2(src, dst)

    monkeypatch.setattr(adapter_bank.shutil, "copy2", failing_copy)
    text = index_path.read_text()
    with pytest.raises(OSError, match="disk full"):
        write_adapter_bank(bank, entries)
    monkeypatch.undo()
    assert index_path.read_text() == text
    assert sorted(p.name for p in (bank / "adapters").iterdir()) == folders
    assert AdapterBank.open(bank, device="cpu").names == ["clean", "objbg"]

    with pytest.raises(AdapterBankError, match="reserved"):
        write_adapter_bank(bank, [BankEntry("all", entries[0].adapter_dir, entries[0].config)])
    with pytest.raises(AdapterBankError, match=r"unique; repeated: \['clean'\]"):
        write_adapter_bank(bank, [entries[0], entries[0]])
    # replace=True keeps only what is written
    write_adapter_bank(bank, [entries[1]], replace=True)
    assert list(read_bank_index(bank)["entries"]) == ["objbg"] and len(list((bank / "adapters").iterdir())) == 1

    # a NaN accuracy of any number type is stored as null: index.json stays strict JSON
    nan = torch.tensor(float("nan"))  # a 0-d tensor, as a caller may pass a metric
    write_adapter_bank(bank, [BankEntry("clean", entries[0].adapter_dir, entries[0].config, nan)])
    strict = json.loads(index_path.read_text(), parse_constant=lambda name: pytest.fail(f"index.json holds {name}"))
    assert strict["entries"]["clean"]["accuracy"] is None
