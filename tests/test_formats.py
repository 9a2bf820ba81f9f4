"""Public-format readers: small files written in each exact format, read back;
every kind of bad input must give a DataFormatError that names the file."""
import os
import pickle
from contextlib import contextmanager

import h5py
import numpy as np
import pytest
import torch

from pointpeft_ray.data.formats import (MODELNET40_CLASSES, SCANOBJECTNN_CLASSES, read_fewshot,
                                        read_modelnet40_dat, read_modelnet40_h5, read_modelnet40_text,
                                        read_scanobjectnn, read_shapenet55, safe_unpickle)
from pointpeft_ray.errors import ConfigError, DataFormatError
from pointpeft_ray.models.ops import farthest_point_sample


def random_clouds(n, points, seed, channels=3):
    return np.random.default_rng(seed).uniform(-2, 3, size=(n, points, channels)).astype(np.float32)


def unit_sphere(clouds):
    centred = clouds - clouds.mean(axis=1, keepdims=True)
    return centred / np.linalg.norm(centred, axis=-1).max(axis=1)[:, None, None]


def write_h5(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)
    return path


def write_pickle(path, obj, protocol=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)
    return path


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@contextmanager
def raises_naming(path, *fragments):
    """Expect a DataFormatError whose message holds the path and each fragment."""
    with pytest.raises(DataFormatError) as info:
        yield info
    for part in (str(path), *fragments):
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


# --- ScanObjectNN ----------------------------------------------------------------

SCAN_FILES = {
    ("obj_bg", "train"): "main_split/training_objectdataset.h5",
    ("obj_bg", "test"): "main_split/test_objectdataset.h5",
    ("obj_only", "train"): "main_split_nobg/training_objectdataset.h5",
    ("obj_only", "test"): "main_split_nobg/test_objectdataset.h5",
    ("pb_t50_rs", "train"): "main_split/training_objectdataset_augmentedrot_scale75.h5",
    ("pb_t50_rs", "test"): "main_split/test_objectdataset_augmentedrot_scale75.h5",
}


@pytest.mark.parametrize("variant,split", sorted(SCAN_FILES))
def test_scanobjectnn_reads_each_variant(tmp_path, variant, split):
    points = random_clouds(6, 128, seed=1)
    labels = np.array([0, 3, 14, 7, 7, 1], np.int32)
    mask = np.where(np.arange(128) % 3 == 0, -1, 1)[None].repeat(6, 0)
    path = write_h5(tmp_path / SCAN_FILES[variant, split], data=points, label=labels, mask=mask)
    result = read_scanobjectnn(tmp_path, variant, split)
    np.testing.assert_array_equal(result.points, points)
    assert result.points.dtype == np.float32 and result.labels.dtype == np.int64
    assert result.labels.tolist() == labels.tolist()
    assert result.class_names == list(SCANOBJECTNN_CLASSES) and len(result.class_names) == 15
    assert result.class_names[:3] == ["bag", "bin", "box"] and result.class_names[-1] == "toilet"
    np.testing.assert_array_equal(result.extras["mask"], mask)
    assert result.source == str(path) and result.name == f"scanobjectnn/{variant}:{split}"


def test_scanobjectnn_accepts_column_labels_and_no_mask(tmp_path):
    write_h5(tmp_path / SCAN_FILES["obj_bg", "train"], data=random_clouds(4, 64, 2),
             label=np.array([[2], [0], [1], [2]], np.uint8))
    result = read_scanobjectnn(tmp_path, "OBJ_BG", "train")
    assert result.labels.tolist() == [2, 0, 1, 2] and "mask" not in result.extras


def test_scanobjectnn_missing_file_names_path_and_layout(tmp_path):
    expected = tmp_path / SCAN_FILES["pb_t50_rs", "test"]
    with raises_naming(expected, "expected layout", "main_split_nobg"):
        read_scanobjectnn(tmp_path, "pb_t50_rs", "test")


def test_scanobjectnn_bad_variant_or_split(tmp_path):
    with pytest.raises(ConfigError, match="variant"):
        read_scanobjectnn(tmp_path, "hardest", "train")
    with pytest.raises(ConfigError, match="split"):
        read_scanobjectnn(tmp_path, "obj_bg", "val")


def test_scanobjectnn_wrong_key(tmp_path):
    path = write_h5(tmp_path / SCAN_FILES["obj_bg", "train"], points=random_clouds(2, 64, 3),
                    label=np.zeros(2, np.int64))
    with raises_naming(path, "'data'", "points"):
        read_scanobjectnn(tmp_path, "obj_bg", "train")


@pytest.mark.parametrize("key,data,label,found", [
    ("data", random_clouds(3, 64, 4, channels=4), np.zeros(3, np.int64), "(3, 64, 4)"),
    ("label", random_clouds(3, 64, 4), np.zeros((3, 2), np.int64), "(3, 2)"),
    ("label", random_clouds(3, 64, 4), np.zeros(5, np.int64), "(5,)"),
])
def test_scanobjectnn_wrong_shape(tmp_path, key, data, label, found):
    path = write_h5(tmp_path / SCAN_FILES["obj_bg", "test"], data=data, label=label)
    with raises_naming(path, f"'{key}'", found):
        read_scanobjectnn(tmp_path, "obj_bg", "test")


def test_scanobjectnn_wrong_mask_shape(tmp_path):
    path = write_h5(tmp_path / SCAN_FILES["obj_bg", "test"], data=random_clouds(3, 64, 4),
                    label=np.zeros(3, np.int64), mask=np.zeros((3, 63)))
    with raises_naming(path, "'mask'", "(3, 63)"):
        read_scanobjectnn(tmp_path, "obj_bg", "test")


def test_scanobjectnn_label_out_of_range(tmp_path):
    path = write_h5(tmp_path / SCAN_FILES["obj_only", "train"], data=random_clouds(4, 64, 5),
                    label=np.array([0, 15, 16, 3]))
    with raises_naming(path, "2 labels outside 0..14"):
        read_scanobjectnn(tmp_path, "obj_only", "train")


def test_scanobjectnn_nan_points(tmp_path):
    points = random_clouds(5, 64, 6)
    points[1, 3, 0] = np.nan
    points[4, 0, 2] = np.inf
    path = write_h5(tmp_path / SCAN_FILES["obj_only", "test"], data=points, label=np.zeros(5, np.int64))
    with raises_naming(path, "2 of 5 samples"):
        read_scanobjectnn(tmp_path, "obj_only", "test")


def test_scanobjectnn_empty_split(tmp_path):
    path = write_h5(tmp_path / SCAN_FILES["obj_bg", "train"], data=np.zeros((0, 64, 3), np.float32),
                    label=np.zeros(0, np.int64))
    with raises_naming(path, "empty"):
        read_scanobjectnn(tmp_path, "obj_bg", "train")


def test_scanobjectnn_truncated_or_foreign_file(tmp_path):
    path = write_h5(tmp_path / SCAN_FILES["obj_bg", "train"], data=random_clouds(8, 256, 7),
                    label=np.zeros(8, np.int64))
    truncate(path)
    with raises_naming(path, "HDF5"):
        read_scanobjectnn(tmp_path, "obj_bg", "train")
    path.write_text("not an HDF5 file")
    with raises_naming(path, "HDF5"):
        read_scanobjectnn(tmp_path, "obj_bg", "train")


# --- ModelNet40 text tree -----------------------------------------------------

TEXT_CLASSES = ["airplane", "flower_pot", "night_stand", "xbox"]


def write_text_tree(root, split_ids, clouds, names=TEXT_CLASSES):
    base = root / "modelnet40_normal_resampled"
    base.mkdir(parents=True)
    (base / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    for split, ids in split_ids.items():
        (base / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
    for shape_id, cloud in clouds.items():
        folder = base / shape_id.rpartition("_")[0]
        folder.mkdir(exist_ok=True)
        np.savetxt(folder / f"{shape_id}.txt", cloud, fmt="%.6f", delimiter=",")
    return base


def fps_reference(cloud_xyz, num_points):
    chosen = farthest_point_sample(torch.from_numpy(cloud_xyz)[None], num_points, min_norm_sq=0.0)[0]
    return cloud_xyz[chosen.numpy()]


def test_modelnet40_text_reads_samples_and_normalises(tmp_path):
    train_ids = ["airplane_0001", "flower_pot_0001", "night_stand_0012", "xbox_0003", "flower_pot_0002"]
    # Mixed point counts check that FPS batches only equal-sized clouds together.
    sizes = [200, 200, 150, 200, 150]
    clouds = {i: random_clouds(1, n, seed, channels=6)[0] for seed, (i, n) in enumerate(zip(train_ids, sizes))}
    base = write_text_tree(tmp_path, {"train": train_ids, "test": ["xbox_0004"]},
                           {**clouds, "xbox_0004": random_clouds(1, 100, 9, channels=6)[0]})
    result = read_modelnet40_text(tmp_path, "train", num_points=64, progress=False, batch_size=3)
    assert result.points.shape == (5, 64, 3) and result.points.dtype == np.float32
    assert result.labels.tolist() == [0, 1, 2, 3, 1]
    assert result.class_names == TEXT_CLASSES
    assert result.source == str(base) and result.name == "modelnet40:train"
    for row, shape_id in enumerate(train_ids):
        xyz = np.loadtxt(base / shape_id.rpartition("_")[0] / f"{shape_id}.txt", delimiter=",",
                         dtype=np.float32)[:, :3]
        expected = unit_sphere(fps_reference(xyz, 64)[None])[0]
        np.testing.assert_allclose(result.points[row], expected, atol=1e-5)
    np.testing.assert_allclose(result.points.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.points, axis=-1).max(axis=1), 1, atol=1e-5)
    assert len(read_modelnet40_text(tmp_path, "test", num_points=100, progress=False)) == 1


def test_modelnet40_text_missing_directory_and_shape_file(tmp_path):
    with raises_naming(tmp_path / "modelnet40_normal_resampled", "expected layout", "shape_names"):
        read_modelnet40_text(tmp_path, "train", progress=False)
    base = write_text_tree(tmp_path, {"train": ["airplane_0001", "airplane_0002"]},
                           {"airplane_0001": random_clouds(1, 80, 1, channels=6)[0]})
    with raises_naming(base / "modelnet40_train.txt", "1 of 2", "airplane_0002.txt", "expected layout"):
        read_modelnet40_text(tmp_path, "train", num_points=32, progress=False)
    with raises_naming(base / "modelnet40_test.txt", "expected layout"):
        read_modelnet40_text(tmp_path, "test", num_points=32, progress=False)


@pytest.mark.parametrize("bad_id,fragment", [("airplane", "'airplane'"), ("car_0001", "'car'")])
def test_modelnet40_text_bad_shape_id(tmp_path, bad_id, fragment):
    base = write_text_tree(tmp_path, {"train": [bad_id]}, {})
    with raises_naming(base / "modelnet40_train.txt", fragment):
        read_modelnet40_text(tmp_path, "train", num_points=32, progress=False)


def test_modelnet40_text_bad_cloud_files(tmp_path):
    cloud = random_clouds(1, 80, 1, channels=6)[0]
    base = write_text_tree(tmp_path, {"train": ["xbox_0001"]}, {"xbox_0001": cloud})
    path = base / "xbox" / "xbox_0001.txt"
    with raises_naming(path, "80 points, fewer than the 128"):
        read_modelnet40_text(tmp_path, "train", num_points=128, progress=False)
    cloud[5, 1] = np.nan
    np.savetxt(path, cloud, fmt="%.6f", delimiter=",")
    with raises_naming(path, "1 of 80 points hold NaN"):
        read_modelnet40_text(tmp_path, "train", num_points=32, progress=False)
    path.write_text("1.0,2.0,3.0,0,0,1\nnot,a,number,0,0,1\n")
    with raises_naming(path, "x,y,z"):
        read_modelnet40_text(tmp_path, "train", num_points=1, progress=False)


def test_modelnet40_text_empty_split(tmp_path):
    base = write_text_tree(tmp_path, {"test": []}, {})
    with raises_naming(base, "empty"):
        read_modelnet40_text(tmp_path, "test", num_points=32, progress=False)


# --- ModelNet40 pickled cache ---------------------------------------------------

def dat_content(n=5, points=96, seed=0):
    clouds = [c for c in random_clouds(n, points, seed, channels=6)]
    labels = [np.array([k * 7 % 40], np.int32) for k in range(n)]
    return clouds, labels


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_modelnet40_dat_reads_with_opt_in(tmp_path, protocol):
    clouds, labels = dat_content()
    path = write_pickle(tmp_path / "modelnet40_train_8192pts_fps.dat", [clouds, labels], protocol)
    result = read_modelnet40_dat(path, allow_pickle=True)
    np.testing.assert_allclose(result.points, unit_sphere(np.stack(clouds)[:, :, :3]), atol=1e-5)
    assert result.labels.tolist() == [int(x[0]) for x in labels]
    assert result.class_names == list(MODELNET40_CLASSES) and result.source == str(path)


def test_modelnet40_class_names_are_the_standard_forty():
    assert len(MODELNET40_CLASSES) == 40 and list(MODELNET40_CLASSES) == sorted(MODELNET40_CLASSES)
    assert {"flower_pot", "night_stand", "range_hood", "tv_stand", "glass_box"} <= set(MODELNET40_CLASSES)


def test_modelnet40_dat_refuses_without_opt_in(tmp_path):
    path = write_pickle(tmp_path / "modelnet40_test_8192pts_fps.dat", list(dat_content()))
    with raises_naming(path, "allow_pickle=True", "run code"):
        read_modelnet40_dat(path)


def test_modelnet40_dat_bad_content(tmp_path):
    clouds, labels = dat_content()
    path = tmp_path / "modelnet40_test_8192pts_fps.dat"
    with raises_naming(path, "not found"):
        read_modelnet40_dat(path, allow_pickle=True)
    write_pickle(path, {"points": clouds})
    with raises_naming(path, "expected [list of point arrays"):
        read_modelnet40_dat(path, allow_pickle=True)
    write_pickle(path, [clouds, labels[:3]])
    with raises_naming(path, "5 point clouds but 3 labels"):
        read_modelnet40_dat(path, allow_pickle=True)
    write_pickle(path, [clouds[:2] + [clouds[2][:50]], labels[:3]])
    with raises_naming(path, "point cloud 2", "(50, 6)"):
        read_modelnet40_dat(path, allow_pickle=True)
    write_pickle(path, [clouds, labels[:4] + [np.array([40], np.int32)]])
    with raises_naming(path, "1 labels outside 0..39"):
        read_modelnet40_dat(path, allow_pickle=True)
    write_pickle(path, [[], []])
    with raises_naming(path, "empty"):
        read_modelnet40_dat(path, allow_pickle=True)


def test_modelnet40_dat_truncated(tmp_path):
    path = write_pickle(tmp_path / "modelnet40_train_8192pts_fps.dat", list(dat_content()))
    truncate(path)
    with raises_naming(path, "truncated"):
        read_modelnet40_dat(path, allow_pickle=True)


# --- the restricted unpickler ----------------------------------------------------

class CreatesMarker:
    """Unpickling this calls os.system, which must never happen."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


class CallsNumpyLoad:
    """A numpy global that is not one of the admitted array-rebuilding ones."""
    def __reduce__(self):
        return np.load, ("anything.npy",)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_unpickle_admits_arrays_scalars_and_containers(tmp_path, protocol):
    content = {"arrays": [np.arange(12, dtype=np.float32).reshape(4, 3), np.array([3], np.int32)],
               "scalar": np.int64(7), "tuple": (1, "x", 2.5, None), "set": {1, 2}, "raw": b"\x00\xff"}
    loaded = safe_unpickle(write_pickle(tmp_path / "ok.pkl", content, protocol))
    np.testing.assert_array_equal(loaded["arrays"][0], content["arrays"][0])
    assert loaded["arrays"][1].dtype == np.int32 and loaded["scalar"] == 7
    assert loaded["tuple"] == content["tuple"] and loaded["set"] == {1, 2} and loaded["raw"] == b"\x00\xff"


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    clouds, labels = dat_content(n=2)
    path = write_pickle(tmp_path / "modelnet40_train_8192pts_fps.dat",
                        [clouds, labels + [CreatesMarker(marker)]], protocol)
    with raises_naming(path, f"{os.system.__module__}.system", "refused"):
        read_modelnet40_dat(path, allow_pickle=True)
    assert not marker.exists()


@pytest.mark.parametrize("payload,refused", [(CallsEval(), "builtins.eval"),
                                             (CallsNumpyLoad(), "numpy.load")])
def test_other_globals_are_refused(tmp_path, payload, refused):
    path = write_pickle(tmp_path / "evil.pkl", [np.zeros(3), payload])
    with raises_naming(path, refused):
        safe_unpickle(path)


def test_unknown_module_is_refused_not_imported(tmp_path):
    # GLOBAL opcode naming a module that does not exist: refused by name, no import attempted.
    path = tmp_path / "unknown.pkl"
    path.write_bytes(b"cno_such_module_xyz\nrun\n(tR.")
    with raises_naming(path, "no_such_module_xyz.run"):
        safe_unpickle(path)


def test_codecs_encode_only_for_latin1(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVzlib_codec\ntR.")
    with raises_naming(path, "zlib_codec"):
        safe_unpickle(path)


# --- ModelNet40 HDF5 ------------------------------------------------------------

def test_modelnet40_h5_concatenates_files_in_sorted_order(tmp_path):
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    parts = [random_clouds(3, 64, seed) for seed in range(3)]
    for index in (1, 0):  # written out of order; read back sorted
        write_h5(folder / f"ply_data_train{index}.h5", data=parts[index],
                 label=np.full((3, 1), 10 * index + 1, np.uint8), normal=parts[index])
    write_h5(folder / "ply_data_test0.h5", data=parts[2], label=np.full((3, 1), 39, np.uint8))
    train = read_modelnet40_h5(tmp_path, "train")
    np.testing.assert_array_equal(train.points, np.concatenate(parts[:2]))
    assert train.labels.tolist() == [1] * 3 + [11] * 3
    assert train.class_names == list(MODELNET40_CLASSES)
    test = read_modelnet40_h5(tmp_path, "test")
    assert len(test) == 3 and test.class_counts()["xbox"] == 3


def test_modelnet40_h5_bad_input_names_the_file(tmp_path):
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    with raises_naming(folder, "expected layout"):
        read_modelnet40_h5(tmp_path, "train")
    folder.mkdir()
    with raises_naming(folder / "ply_data_train*.h5", "ply_data_{train,test}"):
        read_modelnet40_h5(tmp_path, "train")
    write_h5(folder / "ply_data_train0.h5", data=random_clouds(2, 64, 0), label=np.zeros((2, 1)))
    bad = write_h5(folder / "ply_data_train1.h5", data=random_clouds(2, 64, 1), label=np.array([[3], [40]]))
    with raises_naming(bad, "1 labels outside 0..39"):
        read_modelnet40_h5(tmp_path, "train")
    write_h5(bad, data=random_clouds(2, 64, 1), labels=np.zeros((2, 1)))
    with raises_naming(bad, "'label'", "labels"):
        read_modelnet40_h5(tmp_path, "train")
    truncate(write_h5(bad, data=random_clouds(20, 256, 1), label=np.zeros((20, 1))))
    with raises_naming(bad, "HDF5"):
        read_modelnet40_h5(tmp_path, "train")


# --- Few-shot ModelNet40 --------------------------------------------------------

def fewshot_samples(originals_per_label, per_class, seed):
    clouds = iter(random_clouds(len(originals_per_label) * per_class, 128, seed, channels=6))
    return [(next(clouds), label, original)
            for label, original in enumerate(originals_per_label) for _ in range(per_class)]


def test_fewshot_reads_episode(tmp_path):
    originals = [15, 0, 23, 8, 39]
    episode = {"train": fewshot_samples(originals, 2, 0),
               "test": [(p, np.int64(l), np.array([o], np.int32)) for p, l, o in fewshot_samples(originals, 3, 1)]}
    path = write_pickle(tmp_path / "5way_2shot" / "3.pkl", episode)
    train = read_fewshot(tmp_path, 5, 2, 3, "train", allow_pickle=True)
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert train.class_names == ["flower_pot", "airplane", "night_stand", "chair", "xbox"]
    assert train.extras["original_label"].tolist() == [o for o in originals for _ in range(2)]
    expected = unit_sphere(np.stack([p[:, :3] for p, _, _ in episode["train"]]))
    np.testing.assert_allclose(train.points, expected, atol=1e-5)
    assert train.source == str(path) and train.name == "modelnet40_fewshot/5way_2shot/3:train"
    test = read_fewshot(tmp_path, 5, 2, 3, "test", allow_pickle=True)
    assert len(test) == 15 and test.class_names == train.class_names


def test_fewshot_refusals_and_bad_content(tmp_path):
    path = tmp_path / "5way_10shot" / "0.pkl"
    with raises_naming(path, "expected layout", "way_"):
        read_fewshot(tmp_path, 5, 10, 0, "train", allow_pickle=True)
    write_pickle(path, {"train": fewshot_samples([1, 2], 1, 0)})
    with raises_naming(path, "allow_pickle=True"):
        read_fewshot(tmp_path, 5, 10, 0, "train")
    with raises_naming(path, "'test'", "train"):
        read_fewshot(tmp_path, 5, 10, 0, "test", allow_pickle=True)
    two_way = write_pickle(tmp_path / "2way_10shot" / "0.pkl", {"train": fewshot_samples([1, 2, 3], 1, 0)})
    with raises_naming(two_way, "1 labels outside 0..1"):
        read_fewshot(tmp_path, 2, 10, 0, "train", allow_pickle=True)
    write_pickle(path, {"train": [(np.zeros((128, 6)), 0, 1), (np.zeros((128, 6)), 0, 2)]})
    with raises_naming(path, "mixes original classes [1, 2]"):
        read_fewshot(tmp_path, 5, 10, 0, "train", allow_pickle=True)
    write_pickle(path, {"train": [(np.zeros((128, 6)), 0)]})
    with raises_naming(path, "sample 0"):
        read_fewshot(tmp_path, 5, 10, 0, "train", allow_pickle=True)
    write_pickle(path, {"train": []})
    with raises_naming(path, "empty"):
        read_fewshot(tmp_path, 5, 10, 0, "train", allow_pickle=True)


def test_fewshot_malicious_and_truncated(tmp_path):
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "5way_10shot" / "1.pkl",
                        {"train": fewshot_samples([1], 1, 0) + [CreatesMarker(marker)]})
    with raises_naming(path, f"{os.system.__module__}.system"):
        read_fewshot(tmp_path, 5, 10, 1, "train", allow_pickle=True)
    assert not marker.exists()
    write_pickle(path, {"train": fewshot_samples([1, 2], 4, 0)})
    truncate(path)
    with raises_naming(path, "truncated"):
        read_fewshot(tmp_path, 5, 10, 1, "train", allow_pickle=True)


# --- ShapeNet-55 ------------------------------------------------------------------

def write_shapenet(root, splits, points=64):
    (root / "ShapeNet-55").mkdir(parents=True)
    (root / "shapenet_pc").mkdir()
    written = {}
    for split, names in splits.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for seed, name in enumerate(names):
            written[name] = random_clouds(1, points, seed)[0]
            np.save(root / "shapenet_pc" / name, written[name])
    return written


def test_shapenet55_reads_clouds_and_synset_labels(tmp_path):
    train = ["04379243-aaa.npy", "02691156-bbb.npy", "03001627-ccc.npy", "02691156-ddd.npy"]
    test = ["04379243-eee.npy", "03797390-fff.npy"]  # a synset only in test still shifts the train labels
    clouds = write_shapenet(tmp_path, {"train": train, "test": test})
    result = read_shapenet55(tmp_path, "train", progress=False)
    assert result.class_names == ["02691156", "03001627", "03797390", "04379243"]
    assert result.labels.tolist() == [3, 0, 1, 0]
    np.testing.assert_array_equal(result.points, np.stack([clouds[n] for n in train]))
    assert result.source == str(tmp_path / "ShapeNet-55" / "train.txt")
    assert read_shapenet55(tmp_path, "test", progress=False).labels.tolist() == [3, 2]


def test_shapenet55_bad_input(tmp_path):
    with raises_naming(tmp_path / "ShapeNet-55" / "train.txt", "expected layout", "shapenet_pc"):
        read_shapenet55(tmp_path, "train", progress=False)
    write_shapenet(tmp_path, {"train": ["02691156-a.npy", "02691156-b.npy"], "test": []})
    cloud_dir = tmp_path / "shapenet_pc"
    with raises_naming(tmp_path / "ShapeNet-55" / "test.txt", "empty"):
        read_shapenet55(tmp_path, "test", progress=False)
    np.save(cloud_dir / "02691156-b.npy", np.zeros((64, 4), np.float32))
    with raises_naming(cloud_dir / "02691156-b.npy", "(64, 3)", "(64, 4)"):
        read_shapenet55(tmp_path, "train", progress=False)
    nan_cloud = np.zeros((64, 3), np.float32)
    nan_cloud[[3, 9], 0] = np.nan
    np.save(cloud_dir / "02691156-b.npy", nan_cloud)
    with raises_naming(cloud_dir / "02691156-b.npy", "2 points hold NaN"):
        read_shapenet55(tmp_path, "train", progress=False)
    truncate(cloud_dir / "02691156-a.npy")
    with raises_naming(cloud_dir / "02691156-a.npy", "truncated"):
        read_shapenet55(tmp_path, "train", progress=False)
    (cloud_dir / "02691156-a.npy").unlink()
    with raises_naming(tmp_path / "ShapeNet-55" / "train.txt", "1 of 2", "02691156-a.npy"):
        read_shapenet55(tmp_path, "train", progress=False)
    (tmp_path / "ShapeNet-55" / "train.txt").write_text("nosynset.npy\n")
    with raises_naming(tmp_path / "ShapeNet-55" / "train.txt", "'nosynset.npy'"):
        read_shapenet55(tmp_path, "train", progress=False)
