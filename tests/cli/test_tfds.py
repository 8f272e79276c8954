"""`keras-cxr tfds build`: the summary line, and one-line errors for bad folders and images."""

import json
import re

import numpy as np
import pytest

from keras_cxr.data import load_image, read_table
from keras_cxr.data.tfds import BUILDER_NAME, VERSION, read_tfds_table
from tests.cli.support import invoke, one_line_error
from tests.conftest import REPO
from tests.data.test_tfds import CLASSES, small_folder


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


def cxr4_folder(root, cxr4_dir, per_class=(6, 2)):
    """train.csv / val.csv of a few cxr4 images per class, images/ linking to cxr4's files."""
    import pandas as pd

    (root / "images").mkdir(parents=True)
    for split, count in zip(("train", "val"), per_class):
        frame = pd.read_csv(cxr4_dir / f"{split}.csv")
        frame = pd.concat([frame[frame[c] == 1].head(count) for c in CLASSES])
        frame.to_csv(root / f"{split}.csv", index=False)
        for name in frame["new_filename"]:
            (root / "images" / name).symlink_to(cxr4_dir / "images" / name)
    return root


@pytest.mark.slow
def test_fit_from_a_build_equals_fit_from_its_folder(tmp_path, cxr4_dir):
    folder = cxr4_folder(tmp_path / "data", cxr4_dir)
    assert invoke("tfds", "build", folder, "--out", tmp_path / "tfds", "--quiet").exit_code == 0
    common = (REPO / "recipes" / "smoke.py", "--epochs", 2, "--image-size", 32, "--batch-size", 8,
              "--set", "swa.start_epoch=none", "--quiet")
    from_csv = invoke("fit", *common, "--data-dir", folder, "--out", tmp_path / "csv")
    from_tfds = invoke("fit", *common, "--tfds-dir", tmp_path / "tfds", "--out", tmp_path / "tfds_run")
    assert from_csv.exit_code == 0 and from_tfds.exit_code == 0, (from_csv.output, from_tfds.output)
    assert (tmp_path / "tfds_run" / "val_probs.csv").read_bytes() == (tmp_path / "csv" / "val_probs.csv").read_bytes()
    recipe = json.loads((tmp_path / "tfds_run" / "recipe.json").read_text())["data"]
    assert recipe["tfds_dir"] == str(tmp_path / "tfds") and recipe["data_dir"] is None
    one_line_error(invoke("report", tmp_path / "tfds_run", "--out", tmp_path / "page.html"),
                   "trained from the TFDS build", "give --probs and --labels")


def test_tfds_dir_excludes_the_csv_data_options(tmp_path):
    one_line_error(invoke("fit", REPO / "recipes" / "smoke.py", "--tfds-dir", tmp_path, "--data-dir", tmp_path),
                   "--tfds-dir replaces --data-dir / --folds-dir")
    one_line_error(invoke("fit", REPO / "recipes" / "smoke.py", "--tfds-dir", tmp_path, "--set",
                          "data.extra_train=('more.csv',)", "--out", tmp_path / "run"),
                   "Data.tfds_dir trains from a TFDS build: Data.extra_train cannot be set with it")
    one_line_error(invoke("fit", REPO / "recipes" / "smoke.py", "--tfds-dir", tmp_path / "none", "--out",
                          tmp_path / "run"), str(tmp_path / "none"))
