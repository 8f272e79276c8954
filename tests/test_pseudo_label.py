"""Pseudo-labels: thresholds, caps, the command, and training on them with data.extra_train."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from keras_cxr.cli import main
from keras_cxr.data import read_table
from keras_cxr.data.synthetic import ensure_default_dataset
from keras_cxr.probabilities import Probabilities, write_probabilities
from keras_cxr.pseudo_label import parse_thresholds, select_pseudo_labels
from keras_cxr.recipe import Data
from keras_cxr.training import fit_recipe

CLASSES = ("normal", "bacteria", "virus", "COVID-19")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def probs_of(rows):
    values = np.array(rows, np.float64)
    return Probabilities("p.csv", tuple(f"{i}.png" for i in range(len(values))), values, CLASSES)


PROBS = probs_of([
    [0.96, 0.02, 0.01, 0.01],  # normal, very confident
    [0.91, 0.05, 0.02, 0.02],  # normal, below 0.92
    [0.03, 0.93, 0.02, 0.02],  # bacteria
    [0.05, 0.05, 0.86, 0.04],  # virus
    [0.05, 0.05, 0.05, 0.85],  # COVID-19
    [0.40, 0.30, 0.20, 0.10],  # unsure
    [0.99, 0.005, 0.003, 0.002],  # normal, most confident
])


def test_class_aware_thresholds_and_counts():
    thresholds = parse_thresholds("normal=0.92,bacteria=0.90,virus=0.85,COVID-19=0.80", CLASSES)
    frame = select_pseudo_labels(PROBS, thresholds, weight=0.5)
    assert list(frame.new_filename) == ["0.png", "2.png", "3.png", "4.png", "6.png"]
    assert frame[list(CLASSES)].sum().tolist() == [2, 1, 1, 1]
    assert (frame.sample_weight == 0.5).all()
    # One global threshold keeps only the head class here: the seed's failure mode.
    glob = select_pseudo_labels(PROBS, 0.95)
    assert list(glob.new_filename) == ["0.png", "6.png"]


def test_max_per_class_keeps_the_most_confident():
    frame = select_pseudo_labels(PROBS, 0.5, max_per_class=1)
    assert list(frame.new_filename) == ["2.png", "3.png", "4.png", "6.png"]  # file order, 6 beats 0 and 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("normal=0.9,bacteria=0.9,virus=0.9", "no threshold for COVID-19"),
        ("normal=0.9,flu=0.5", "unknown class 'flu'"),
        ("normal=high", "normal='high' is not a number"),
        ("normal", "expected CLASS=VALUE"),
    ],
)
def test_bad_thresholds(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_thresholds(spec, CLASSES)


def test_command_writes_a_training_table(tmp_path):
    write_probabilities(tmp_path / "p.csv", PROBS.filenames, PROBS.values)
    images = tmp_path / "test_images"
    images.mkdir()
    result = invoke("pseudo-label", tmp_path / "p.csv", "--thresholds", "normal=0.92,bacteria=0.9,virus=0.85,COVID-19=0.8",
                    "--max-per-class", 1, "--weight", 0.3, "--images", images, "--out", tmp_path / "out" / "pseudo.csv")
    assert result.exit_code == 0, result.output
    assert "4 of 7 rows pseudo-labeled at weight 0.3 (normal 1, bacteria 1, virus 1, COVID-19 1)" in result.output
    frame = pd.read_csv(tmp_path / "out" / "pseudo.csv")
    assert list(frame.columns) == ["new_filename", "source_dir", *CLASSES, "sample_weight", "confidence"]
    assert (frame.source_dir == "../test_images").all() and (frame.sample_weight == 0.3).all()
    table = read_table(tmp_path / "out" / "pseudo.csv", labels="required", check_files=False)
    assert table.paths[0] == str(images / "2.png") and np.allclose(table.sample_weight, 0.3) and len(table) == 4

    result = invoke("pseudo-label", tmp_path / "p.csv", "--out", tmp_path / "x.csv")
    assert result.exit_code == 2 and "exactly one of --threshold" in result.output
    result = invoke("pseudo-label", tmp_path / "p.csv", "--threshold", 0.9, "--weight", 0, "--out", tmp_path / "x.csv")
    assert result.exit_code == 2 and "--weight must be > 0" in result.output


@pytest.mark.slow
def test_fit_trains_on_extra_rows_at_their_weight(tmp_path):
    from tests.test_training import tiny_recipe

    root = ensure_default_dataset()
    test = read_table(root / "test.csv")
    # Pseudo-labels for the test images: their true classes (a perfect teacher), weight 0.5.
    frame = pd.DataFrame(test.labels.astype(int), columns=list(CLASSES))
    frame.insert(0, "new_filename", test.filenames)
    frame["sample_weight"] = 0.5
    frame.to_csv(tmp_path / "pseudo.csv", index=False)
    recipe = tiny_recipe(data=Data(data_dir=str(root), extra_train=(str(tmp_path / "pseudo.csv"),)), epochs=1,
                         swa=tiny_recipe().swa.replace(start_epoch=None))
    metrics = fit_recipe(recipe, tmp_path / "run", verbose=0)
    assert metrics["train_images"] == 232 + len(test)
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["data"]["extra_train"] == [
        str(tmp_path / "pseudo.csv")]

    # Validation rows in the extra table are refused before training.
    val = pd.read_csv(root / "val.csv").head(3)
    val.to_csv(tmp_path / "leak.csv", index=False)
    leaky = recipe.replace(data=Data(data_dir=str(root), extra_train=(str(tmp_path / "leak.csv"),)))
    with pytest.raises(Exception, match=r"leak.csv: image .* is also in .*val.csv"):
        fit_recipe(leaky, tmp_path / "run2", verbose=0)
    assert not (tmp_path / "run2" / "recipe.json").exists()
