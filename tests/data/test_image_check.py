"""keras_cxr.data.image_check: every row is checked where its image is read from, a file or a TFDS record."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from keras_cxr.data import TableError, drop_unreadable, find_unreadable, read_table

CLASSES = ["normal", "bacteria", "virus", "COVID-19"]


def folder(root, rows=4):
    """train.csv (`rows` labeled rows) and its PNG images."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    names = [f"{i}.png" for i in range(rows)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / "images" / name)
    frame = pd.DataFrame(np.eye(4, dtype=int)[np.arange(rows) % 4], columns=CLASSES)
    frame.insert(0, "new_filename", names)
    frame.to_csv(root / "train.csv", index=False)
    return root


def test_a_corrupt_file_of_a_csv_table_is_named_with_its_row(tmp_path):
    data = folder(tmp_path / "data")
    (data / "images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    table = read_table(data / "train.csv")
    bad = find_unreadable(table)
    assert [i for i, _ in bad] == [2]
    assert str(data / "images" / "2.png") in bad[0][1]
    with pytest.raises(TableError, match=r"train.csv, row '2.png': .*2\.png: cannot read image"):
        drop_unreadable(table)
    kept, skipped = drop_unreadable(table, "skip")
    assert kept.filenames == ("0.png", "1.png", "3.png")
    assert [s["filename"] for s in skipped] == ["2.png"]


def test_a_tfds_table_is_checked_from_its_records_not_the_files_it_was_built_from(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from keras_cxr.data.tfds import build_tfds, read_tfds_table

    data = folder(tmp_path / "data")
    build_tfds(data, tmp_path / "out")
    for path in (data / "images").iterdir():
        path.unlink()  # the build holds the bytes; its `paths` only name the rows now
    table = read_tfds_table(tmp_path / "out", "train")
    assert find_unreadable(table) == []
    assert drop_unreadable(table)[0] is table


def test_a_bad_stored_image_is_named_by_its_table_and_row(tmp_path):
    data = folder(tmp_path / "data")
    table = read_table(data / "train.csv")
    stored = [path.read_bytes() for path in map(lambda p: data / "images" / p, table.filenames)]
    stored[1] = b"not an image"
    table = type(table)(csv_path="store", filenames=table.filenames, paths=table.paths, labels=table.labels,
                        sample_weight=None, class_names=table.class_names, images=stored)
    bad = find_unreadable(table)
    assert [i for i, _ in bad] == [1]
    assert bad[0][1].startswith("store: 1.png: cannot read image")
