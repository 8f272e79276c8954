"""`keras-cxr tfds build`: the summary line, and one-line errors for bad folders and images."""

import re

import numpy as np

from keras_cxr.data import load_image, read_table
from keras_cxr.data.tfds import BUILDER_NAME, VERSION, read_tfds_table
from tests.cli.support import invoke, one_line_error
from tests.data.test_tfds import small_folder


def test_build_prints_examples_size_and_time_and_the_build_reads_back(tmp_path):
    folder = small_folder(tmp_path / "data")
    result = invoke("tfds", "build", folder, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    version_dir = tmp_path / "out" / BUILDER_NAME / VERSION
    size = sum(p.stat().st_size for p in version_dir.iterdir())
    match = re.fullmatch(r"train 6, test 2 examples; (\d+\.\d) MB in (\d+\.\d) s -> (.+)", result.output.strip())
    assert match, result.output
    assert float(match[1]) == round(size / 1e6, 1) and match[3] == str(version_dir)
    table, csv = read_tfds_table(tmp_path / "out", "train"), read_table(folder / "train.csv")
    np.testing.assert_array_equal(load_image(table.image_source(2), 16), load_image(csv.paths[2], 16))

    shown = invoke("tfds", "build", folder, "--out", tmp_path / "progress")
    assert shown.exit_code == 0 and "Writing train (train.csv)." in shown.output and "6/6" in shown.output


def test_bad_input_is_one_line_naming_the_path_and_why(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("tfds", "build", tmp_path / "empty", "--out", tmp_path / "out"),
                   f"{tmp_path / 'empty'}: no split CSV found (looked for train.csv, val.csv, test.csv)")
    one_line_error(invoke("tfds", "build", tmp_path / "nowhere", "--out", tmp_path / "out"),
                   f"{tmp_path / 'nowhere'}: folder not found")

    folder = small_folder(tmp_path / "data")
    (folder / "images" / "5.png").write_bytes(b"not an image")
    one_line_error(invoke("tfds", "build", folder, "--out", tmp_path / "out", "--quiet"),
                   "train.csv row '5.png': ", str(folder / "images" / "5.png"))
    assert not (tmp_path / "out" / BUILDER_NAME).exists()

    (folder / "images" / "5.png").unlink()
    one_line_error(invoke("tfds", "build", folder, "--out", tmp_path / "out", "--quiet"),
                   f"DATA_DIR {folder}: train.csv line 7: image not found")

    folder = small_folder(tmp_path / "good")
    assert invoke("tfds", "build", folder, "--out", tmp_path / "out", "--quiet").exit_code == 0
    one_line_error(invoke("tfds", "build", folder, "--out", tmp_path / "out", "--quiet"),
                   f"--out {tmp_path / 'out' / BUILDER_NAME / VERSION}: a build of version {VERSION} is already "
                   "there; replace it with --overwrite")
    assert invoke("tfds", "build", folder, "--out", tmp_path / "out", "--quiet", "--overwrite").exit_code == 0
