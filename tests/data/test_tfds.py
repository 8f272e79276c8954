"""keras_cxr.data.tfds: a folder built as TFDS records reads back as the same table, pixels and batches."""

import ast
import multiprocessing
import os
import pathlib
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from keras_cxr.data import Augmentation, CXRDataset, ImageError, Mixing, TableError, load_image, read_table
from keras_cxr.data.tfds import (
    BUILDER_NAME,
    VERSION,
    TfdsError,
    build_tfds,
    find_build,
    read_tfds_table,
    tfds_splits,
)
from tests.conftest import CXR4

CLASSES = ["normal", "bacteria", "virus", "COVID-19"]


@pytest.fixture(scope="module")
def cxr4_build(tmp_path_factory):
    """cxr4 (2,060 images) built once for this module: the folder given to `build_tfds`."""
    if not (CXR4 / "train.csv").exists():
        pytest.skip(f"real data not found at {CXR4} (../shared/data/cxr4 beside the repository)")
    out = tmp_path_factory.mktemp("cxr4_tfds")
    build_tfds(CXR4, out)
    return out


def csv_table(split):
    return read_table(CXR4 / f"{split}.csv")


def small_folder(root, test_labels=False, weights=None):
    """train.csv (6 rows, one grayscale PNG, patient_id) and an unlabeled test.csv (2 rows), with their images."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    names = [f"{i}.png" for i in range(8)]
    for i, name in enumerate(names):
        shape = (20 + i, 24, 3) if i else (30, 22)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / name)
    y = np.eye(4, dtype=int)[[0, 1, 2, 3, 1, 2]]
    train = pd.DataFrame(y, columns=CLASSES)
    train.insert(0, "new_filename", names[:6])
    train["patient_id"] = [f"p{i // 2}" for i in range(6)]
    if weights is not None:
        train["sample_weight"] = weights
    train.to_csv(root / "train.csv", index=False)
    test = pd.DataFrame({"new_filename": names[6:], **{c: [1, 0] if test_labels and c == "virus" else
                                                           ([0, 1] if test_labels and c == "normal" else ["", ""])
                                                           for c in CLASSES}})
    test.to_csv(root / "test.csv", index=False)
    return root


@pytest.mark.slow
def test_cxr4_build_holds_every_row_in_csv_order_with_the_files_bytes(cxr4_build):
    import tensorflow_datasets as tfds

    version_dir = find_build(cxr4_build)
    assert version_dir == str(cxr4_build / BUILDER_NAME / VERSION)
    assert tfds_splits(cxr4_build) == {"train": 1439, "val": 311, "test": 310}
    builder = tfds.builder_from_directory(version_dir)
    assert str(builder.info.version) == VERSION and builder.info.file_format.value == "array_record"
    for split in ("train", "val", "test"):
        table = csv_table(split)
        patients = pd.read_csv(CXR4 / f"{split}.csv", dtype=str)["patient_id"].tolist()
        source = builder.as_data_source(split)
        assert len(source) == len(table)
        for row in range(len(table)):
            example = source[row]
            assert example["filename"].decode() == table.filenames[row]
            with open(table.paths[row], "rb") as f:
                assert example["image"] == f.read()
            np.testing.assert_array_equal(example["label"], table.labels[row])
            assert example["labeled"] and example["patient_id"].decode() == patients[row]
            assert example["sample_weight"] == 1.0


@pytest.mark.slow
def test_cxr4_tables_and_every_decoded_image_equal_the_csv_path(cxr4_build):
    for split in ("train", "val", "test"):
        csv, records = csv_table(split), read_tfds_table(cxr4_build, split)
        assert records.filenames == csv.filenames and records.paths == csv.paths
        assert records.class_names == csv.class_names and records.sample_weight is None
        np.testing.assert_array_equal(records.labels, csv.labels)
        assert records.images is not None and csv.images is None
        for row in range(len(csv)):
            expected = load_image(csv.image_source(row), 32, keep_gray=True)
            np.testing.assert_array_equal(load_image(records.image_source(row), 32, keep_gray=True), expected)


def _epoch(dataset):
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.slow
def test_cxr4_epoch_of_batches_equals_the_csv_path_in_training_and_evaluation(cxr4_build):
    options = {"image_size": 64, "batch_size": 32, "training": True, "augmentation": Augmentation(erasing_p=0.5),
               "mixing": Mixing(mixup_p=0.5, cutmix_p=0.5), "seed": 7}
    csv_batches = _epoch(CXRDataset(csv_table("train"), **options))
    tfds_batches = _epoch(CXRDataset(read_tfds_table(cxr4_build, "train"), **options))
    assert len(tfds_batches) == len(csv_batches) == 45
    mixed = 0
    for ours, theirs in zip(tfds_batches, csv_batches):
        assert len(ours) == len(theirs) == 2
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
        mixed += int(np.any((theirs[1] > 0) & (theirs[1] < 1)))
    assert mixed > 10  # mixing really ran, so the labels compared are not just the one-hot rows

    evaluation = [_epoch(CXRDataset(table, 64, batch_size=32)) for table in
                  (csv_table("val"), read_tfds_table(cxr4_build, "val"))]
    assert len(evaluation[0]) == len(evaluation[1]) == 10
    for ours, theirs in zip(*evaluation):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])


def _load_rows(images, rows):
    return [bytes(images[row]) for row in rows]


_INHERITED = None  # the image store a forked worker finds already opened by its parent


def _load_inherited(rows):
    return _load_rows(_INHERITED, rows)


@pytest.mark.slow
def test_stored_images_serve_threads_and_pickled_copies_and_refuse_forked_processes(cxr4_build):
    table = read_tfds_table(cxr4_build, "val")
    expected = []
    for row in (0, 5, 310):
        with open(table.paths[row], "rb") as f:
            expected.append(f.read())
    global _INHERITED
    _INHERITED = table.images
    assert _load_rows(table.images, (0, 5, 310)) == expected  # opened in this process before the fork
    refused = pytest.raises(TfdsError, match=r"\[val\]: TFDS records cannot be read in a process forked from one")
    with multiprocessing.get_context("fork").Pool(1) as pool, refused:  # refused, not left hanging
        pool.apply(_load_inherited, ((0, 5, 310),))
    copy = pickle.loads(pickle.dumps(table.images))  # what a 'spawn' worker gets: the folder and split only
    assert copy._source is None and _load_rows(copy, (0, 5, 310)) == expected
    with pytest.raises(ValueError, match=r"\[val\]: its stored images cannot be read in forked worker processes"):
        CXRDataset(table, 48, workers=2, use_multiprocessing=True)

    dataset = CXRDataset(table, 48, batch_size=16)
    with ThreadPoolExecutor(3) as pool:  # as PyDataset's worker threads call it
        threaded = list(pool.map(dataset.__getitem__, range(len(dataset))))
    fresh = CXRDataset(read_tfds_table(cxr4_build, "val"), 48, batch_size=16)
    for index, batch in enumerate(threaded):
        np.testing.assert_array_equal(batch[0], fresh[index][0])


@pytest.mark.slow
def test_subset_and_concat_keep_each_row_with_its_stored_image(cxr4_build):
    train, val = read_tfds_table(cxr4_build, "train"), read_tfds_table(cxr4_build, "val")
    joined = type(train).concat([val.subset([3, 1]), train.subset(np.arange(1439) % 500 == 7)])
    assert joined.filenames == (val.filenames[3], val.filenames[1], train.filenames[7], train.filenames[507],
                                train.filenames[1007])
    for row, path in enumerate(joined.paths):
        with open(path, "rb") as f:
            assert joined.image_source(row).read() == f.read()
    assert joined.images.fork_safe is False  # so CXRDataset still refuses forked workers for it
    picked = joined.subset([4, 0])
    assert picked.filenames == (train.filenames[1007], val.filenames[3])
    assert picked.image_source(0).read() == joined.image_source(4).read()
    with pytest.raises(ValueError, match="table of image files with one of stored images"):
        type(train).concat([train, csv_table("val")])


def test_unlabeled_test_split_sample_weights_and_grayscale_round_trip(tmp_path):
    folder = small_folder(tmp_path / "data", weights=[0.5, 1, 2, 0, 1, 3])
    build_tfds(folder, tmp_path / "out")
    assert tfds_splits(tmp_path / "out") == {"train": 6, "test": 2}
    for split in ("train", "test"):
        csv, records = read_table(folder / f"{split}.csv"), read_tfds_table(tmp_path / "out", split)
        assert records.filenames == csv.filenames
        if split == "train":
            np.testing.assert_array_equal(records.labels, csv.labels)
            np.testing.assert_array_equal(records.sample_weight, [0.5, 1, 2, 0, 1, 3])
        else:
            assert records.labels is None and csv.labels is None and records.sample_weight is None
        for row in range(len(csv)):
            np.testing.assert_array_equal(load_image(records.image_source(row), 16, keep_gray=True),
                                          load_image(csv.paths[row], 16, keep_gray=True))
    gray = read_tfds_table(tmp_path / "out", "train").image_source(0)  # 0.png is an 8-bit grayscale PNG
    assert load_image(gray, 16, keep_gray=True).shape == (16, 16, 1)
    with pytest.raises(TableError, match=r"\[test\]: every label cell was empty in test.csv"):
        read_tfds_table(tmp_path / "out", "test", labels="required")
    batches = CXRDataset(read_tfds_table(tmp_path / "out", "train"), 16, batch_size=4)
    assert len(batches[0]) == 3  # x, y and the sample weights


def test_an_existing_build_is_refused_and_replaced_only_when_asked(tmp_path):
    folder = small_folder(tmp_path / "data")
    build_tfds(folder, tmp_path / "out")
    with pytest.raises(TfdsError, match=rf"{BUILDER_NAME}/{VERSION}: a build of version {VERSION} is already there"):
        build_tfds(folder, tmp_path / "out")
    (folder / "test.csv").unlink()
    build_tfds(folder, tmp_path / "out", overwrite=True)
    assert tfds_splits(tmp_path / "out") == {"train": 6}
    assert sorted(os.listdir(tmp_path / "out")) == [BUILDER_NAME]  # no temporary folder left


def test_an_unreadable_image_fails_the_build_naming_the_file_and_writes_nothing(tmp_path):
    folder = small_folder(tmp_path / "data")
    (folder / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "out").mkdir()
    with pytest.raises(ImageError, match=r"^train.csv row '3.png': .*3\.png"):
        build_tfds(folder, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(TfdsError, match="not a keras-cxr TFDS build"):
        read_tfds_table(tmp_path / "out", "train")


def test_a_build_failing_midway_leaves_no_dataset_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import keras_cxr.data.tfds as module

    folder = small_folder(tmp_path / "data")
    build_tfds(folder, tmp_path / "out")
    before = read_tfds_table(tmp_path / "out", "train")
    real_open = open

    def failing_open(path, *args, **kwargs):
        if str(path).endswith("4.png"):
            raise OSError(f"{path}: disk gone")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(module, "open", failing_open, raising=False)
    with pytest.raises(OSError, match="disk gone"):
        build_tfds(folder, tmp_path / "out", overwrite=True)
    with pytest.raises(OSError, match="disk gone"):
        build_tfds(folder, tmp_path / "fresh")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "out")) == [BUILDER_NAME]
    assert os.listdir(tmp_path / "fresh") == []
    with pytest.raises(TfdsError, match="not a keras-cxr TFDS build"):
        read_tfds_table(tmp_path / "fresh", "train")
    after = read_tfds_table(tmp_path / "out", "train")
    assert after.filenames == before.filenames
    assert after.image_source(4).read() == (folder / "images" / "4.png").read_bytes()


def test_each_split_csv_is_read_once_for_its_table_and_patient_ids(tmp_path, monkeypatch):
    import keras_cxr.data.table as table_module
    from keras_cxr.data.tfds import _folder_split_tables

    folder = small_folder(tmp_path / "data")
    reads = []
    real_read_csv = pd.read_csv

    def counting_read_csv(path, *args, **kwargs):
        reads.append(os.path.basename(path))
        return real_read_csv(path, *args, **kwargs)

    monkeypatch.setattr(table_module.pd, "read_csv", counting_read_csv)
    splits = _folder_split_tables(str(folder), tuple(CLASSES), "new_filename", "images")
    monkeypatch.undo()
    assert sorted(reads) == ["test.csv", "train.csv"]
    for split in ("train", "test"):
        table, expected = splits[split][0], read_table(folder / f"{split}.csv")
        assert (table.csv_path, table.filenames, table.paths) == (expected.csv_path, expected.filenames, expected.paths)
    np.testing.assert_array_equal(splits["train"][0].labels, read_table(folder / "train.csv").labels)
    assert splits["train"][1] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert splits["test"][0].labels is None and splits["test"][1] is None


def test_bad_folders_and_splits_are_one_line_naming_them(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TfdsError, match=rf"^{tmp_path / 'empty'}: no split CSV found \(looked for train.csv"):
        build_tfds(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(TfdsError, match=rf"^{tmp_path / 'missing'}: folder not found"):
        build_tfds(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(TfdsError, match=rf"^{tmp_path / 'empty'}: not a keras-cxr TFDS build"):
        read_tfds_table(tmp_path / "empty", "train")

    foreign = tmp_path / "foreign" / BUILDER_NAME / "1.0.0"
    foreign.mkdir(parents=True)
    (foreign / "dataset_info.json").write_text("{not json")
    with pytest.raises(TfdsError, match=rf"^{foreign}: not a readable TFDS build"):
        read_tfds_table(tmp_path / "foreign", "train")

    build_tfds(small_folder(tmp_path / "data"), tmp_path / "out")
    version_dir = tmp_path / "out" / BUILDER_NAME / VERSION
    with pytest.raises(TfdsError, match=rf"^{version_dir}: no split 'val' \(it has 'train', 'test'\)"):
        read_tfds_table(tmp_path / "out", "val")
    metadata = version_dir / "metadata.json"
    metadata.write_text("{}")
    with pytest.raises(TfdsError, match=rf"^{version_dir}: a TFDS build, but not one made by keras-cxr"):
        read_tfds_table(tmp_path / "out", "train")


def _imported(node):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def test_tensorflow_is_imported_by_the_tfds_module_only_and_that_module_only_inside_functions():
    package = pathlib.Path(__file__).resolve().parents[2] / "keras_cxr"
    heavy = ("tensorflow", "tensorflow_datasets", "array_record")
    importers, at_top = set(), set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        name = str(path.relative_to(package.parent))
        if any(n.split(".")[0] in heavy for node in ast.walk(tree) for n in _imported(node)):
            importers.add(name)
        if any(n == "keras_cxr.data.tfds" or n.split(".")[0] in heavy for node in tree.body for n in _imported(node)):
            at_top.add(name)
    assert importers == {"keras_cxr/data/tfds.py"}
    assert at_top == set()  # keras_cxr.data.tfds itself imports TFDS inside its functions too
