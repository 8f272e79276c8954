"""`keras-cxr explain`: output, and one clear line for bad input."""

import pytest
from click.testing import CliRunner

from keras_cxr.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def model_file(untrained_model_file):
    return untrained_model_file


def test_explain_writes_maps_and_says_where(model_file, cxr4_dir, tmp_path):
    result = invoke("explain", model_file, "--csv", cxr4_dir / "test.csv", "--limit", 3, "--method", "gradcam++",
                    "--out", tmp_path / "x", "--quiet")
    assert result.exit_code == 0, result.output
    assert "3 maps (gradcam++) ->" in result.output and "predicted correctly" in result.output
    assert len(list((tmp_path / "x" / "maps").glob("*.png"))) == 3


def test_the_method_choices_are_the_librarys():
    from keras_cxr.cli._common import CAM_METHODS
    from keras_cxr.explain import METHODS

    assert CAM_METHODS == ("auto", *METHODS)


def test_integrated_gradients_and_its_steps(model_file, cxr4_dir, tmp_path):
    import json

    result = invoke("explain", model_file, "--csv", cxr4_dir / "test.csv", "--limit", 2, "--method",
                    "integrated-gradients", "--steps", 3, "--out", tmp_path, "--quiet", "--sheet", 0)
    assert result.exit_code == 0, result.output
    assert "2 maps (integrated-gradients) ->" in result.output
    info = json.loads((tmp_path / "explain.json").read_text())
    assert info["steps"] == 3 and info["mapped"].startswith("the input pixels, averaged over the 4x4 grid of")
    result = invoke("explain", model_file, "--csv", cxr4_dir / "test.csv", "--steps", 0, "--out", tmp_path)
    assert result.exit_code == 2 and "--steps" in result.output


@pytest.mark.parametrize("args, message", [
    (["--class", "flu"], "--class 'flu' is not a class of MODEL"),
    (["--images", "nowhere"], "--images nowhere: folder not found"),
    (["--method", "scorecam"], "'scorecam' is not one of"),
])
def test_bad_input_is_one_line(model_file, cxr4_dir, tmp_path, args, message):
    result = invoke("explain", model_file, "--csv", cxr4_dir / "test.csv", "--out", tmp_path, "--quiet", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert sum(line.startswith("Error:") for line in result.output.splitlines()) == 1


def test_a_model_without_a_feature_map_is_one_line(cxr4_dir, tmp_path):
    import keras

    images = keras.Input((32, 32, 3), name="images")
    x = keras.layers.Flatten()(images)
    model = keras.Model(images, keras.layers.Dense(4, activation="softmax", name="probs")(x))
    model.save(tmp_path / "flat.keras")
    result = invoke("explain", tmp_path / "flat.keras", "--csv", cxr4_dir / "test.csv", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert result.output.startswith("Error: MODEL 'functional") and "no 'backbone' and 'logits'" in result.output


def test_missing_images_are_one_line(model_file, cxr4_dir, tmp_path):
    result = invoke("explain", model_file, "--csv", cxr4_dir / "test.csv", "--images", tmp_path, "--out", tmp_path)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: --csv test.csv line 2: image not found:") and "more problems)" in result.output


def test_a_csv_with_wrong_columns_is_one_line(model_file, tmp_path):
    (tmp_path / "t.csv").write_text("file,label\na.png,1\n")
    result = invoke("explain", model_file, "--csv", tmp_path / "t.csv", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "missing column(s) 'new_filename'" in result.output
