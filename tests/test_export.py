"""`keras_cxr.export`: exported files give the Keras model's probabilities, calibrated as predict calibrates.

Every export is compared with the Keras model on real cxr4 images (within
1e-4; calibrated ones within 1e-5 of `Calibration.apply`), for the three
families keras-cxr builds itself; metadata comes back from each format;
bad arguments fail with one message naming the field.
"""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from keras_cxr.calibration import Calibration, CalibrationError
from keras_cxr.constants import CLASS_NAMES
from keras_cxr.data.augment import Augmentation
from keras_cxr.data.images import load_image
from keras_cxr.export import ExportError, export_model, metadata, read_metadata
from keras_cxr.predictor import ModelFileError, Predictor, predict_csv

SIZE = 64
ROWS = 8


# Untrained features vary little between images (tiny_effv2's least): its logits are stretched more.
LOGIT_STRETCH = {"cxr_resnet": 8.0, "tiny_effv2": 60.0, "tiny_swin": 8.0}


def _model(name, num_classes=4, seed=0):
    """A seeded untrained model whose logits are stretched, so images get clearly different probabilities."""
    from keras_cxr import models
    from keras_cxr.seeding import set_seed

    set_seed(seed)
    model = models.build(name, num_classes=num_classes, image_size=SIZE)
    logits = model.get_layer("logits")
    logits.kernel.assign(logits.kernel * LOGIT_STRETCH[name])
    return model


def _run_dir(folder, model, recipe=None, calibration=None):
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "best.keras")
    if recipe is not None:
        (folder / "recipe.json").write_text(json.dumps(recipe))
    if calibration is not None:
        calibration.save(folder / "calibration.json")
    return folder


@pytest.fixture(scope="module")
def cxr4_rows(tmp_path_factory):
    """The first 8 cxr4 val rows (a CSV beside the real images) and their 64 px uint8 images."""
    from tests.conftest import CXR4

    if not (CXR4 / "val.csv").exists():
        pytest.skip(f"real data not found at {CXR4}")
    frame = pd.read_csv(CXR4 / "val.csv").head(ROWS)
    csv = tmp_path_factory.mktemp("rows") / "rows.csv"
    frame.to_csv(csv, index=False)
    images = np.stack([load_image(CXR4 / "images" / name, SIZE) for name in frame["new_filename"]])
    return csv, CXR4 / "images", images


def _spread(probs):
    """Guard: images get probabilities 100x the tolerance apart, so a constant output cannot pass."""
    assert np.ptp(probs, axis=0).max() > 0.01, probs


TEMPERATURE = Calibration("temperature", {"temperature": 0.6}, CLASS_NAMES, ("not-a-row.jpeg",), source="test")
VECTOR = Calibration("vector", {"weights": [0.7, 1.3, 2.0, 0.9], "biases": [0.2, -0.4, 0.1, 0.0]}, CLASS_NAMES,
                     ("not-a-row.jpeg",), source="test")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """A cxr_resnet run directory (best.keras, recipe.json, a temperature calibration.json)."""
    return _run_dir(tmp_path_factory.mktemp("run") / "a", _model("cxr_resnet"),
                    recipe={"data": {"class_names": list(CLASS_NAMES)}}, calibration=TEMPERATURE)


@pytest.fixture(scope="module")
def resnet_onnx(resnet_run, tmp_path_factory):
    """`resnet_run` exported to ONNX with its calibration folded in (one export: each takes 10-40 s)."""
    path = tmp_path_factory.mktemp("onnx") / "calibrated.onnx"
    export_model(resnet_run, path, "onnx", calibration=resnet_run)
    return path


def _onnx_probs(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cxr_resnet", "tiny_effv2", "tiny_swin"])
def test_onnx_gives_the_keras_probabilities_at_any_batch_size(name, cxr4_rows, tmp_path):
    _, _, images = cxr4_rows
    run = _run_dir(tmp_path / "run", _model(name))
    keras_probs = Predictor.load(run).model.predict(images, verbose=0)
    _spread(keras_probs)
    meta = export_model(run, tmp_path / "m.onnx", "onnx")
    assert meta["architecture"] == name and meta["image_size"] == SIZE
    for batch in (images, images[:1], images[:5]):  # the batch dimension is dynamic
        probs = _onnx_probs(tmp_path / "m.onnx", batch)
        assert probs.dtype == np.float32 and probs.shape == (len(batch), 4)
        np.testing.assert_allclose(probs, keras_probs[: len(batch)], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cxr_resnet", "tiny_effv2", "tiny_swin"])
def test_torchscript_gives_the_keras_probabilities(name, cxr4_rows, tmp_path):
    import torch

    _, _, images = cxr4_rows
    run = _run_dir(tmp_path / "run", _model(name))
    keras_probs = Predictor.load(run).model.predict(images, verbose=0)
    _spread(keras_probs)
    export_model(run, tmp_path / "m.pt", "torchscript", calibration=VECTOR)
    loaded = torch.jit.load(tmp_path / "m.pt")
    with torch.no_grad():
        for batch in (images, images[:3]):
            probs = loaded(torch.from_numpy(batch)).numpy()
            np.testing.assert_allclose(probs, VECTOR.apply(keras_probs[: len(batch)]), atol=1e-5, rtol=0)
    assert read_metadata(tmp_path / "m.pt")["calibration"]["parameters"] == VECTOR.parameters


@pytest.mark.slow
def test_keras_export_folds_vector_scaling_in_and_loads_in_safe_mode(resnet_run, cxr4_rows, tmp_path):
    import keras

    _, _, images = cxr4_rows
    keras_probs = Predictor.load(resnet_run).model.predict(images, verbose=0)
    export_model(resnet_run / "best.keras", tmp_path / "deploy" / "m.keras", "keras", calibration=VECTOR)
    loaded = keras.saving.load_model(tmp_path / "deploy" / "m.keras", safe_mode=True, compile=False)
    calibrated = loaded.predict(images, verbose=0)
    np.testing.assert_allclose(calibrated, VECTOR.apply(keras_probs), atol=1e-5, rtol=0)
    assert np.abs(calibrated - keras_probs).max() > 0.01  # the calibration is really in there
    predictor = Predictor.load(tmp_path / "deploy" / "m.keras")
    assert predictor.calibration.method == "vector" and predictor.class_names == CLASS_NAMES


@pytest.mark.slow
def test_onnx_with_calibration_gives_what_predict_calibration_gives(resnet_run, resnet_onnx, cxr4_rows):
    csv, images_dir, _ = cxr4_rows
    by_keras = predict_csv([resnet_run], csv, images_dir=images_dir, calibration=resnet_run)
    by_onnx = predict_csv([resnet_onnx], csv, images_dir=images_dir)
    assert by_onnx.filenames == by_keras.filenames
    np.testing.assert_allclose(by_onnx.values, by_keras.values, atol=1e-5, rtol=0)
    uncalibrated = predict_csv([resnet_run], csv, images_dir=images_dir).values
    assert np.abs(uncalibrated - by_keras.values).max() > 0.01


@pytest.mark.slow
def test_predict_mixes_keras_and_onnx_models(resnet_run, resnet_onnx, cxr4_rows, tmp_path):
    csv, images_dir, images = cxr4_rows
    other = _run_dir(tmp_path / "b", _model("cxr_resnet", seed=1))
    mixed = predict_csv([other, resnet_onnx], csv, images_dir=images_dir).values
    a = TEMPERATURE.apply(Predictor.load(resnet_run).model.predict(images, verbose=0))  # folded into the .onnx
    b = Predictor.load(other).model.predict(images, verbose=0)
    np.testing.assert_allclose(mixed, (a + b) / 2, atol=1e-5, rtol=0)
    assert np.abs(a - b).max() > 0.05


@pytest.mark.slow
def test_folded_calibration_is_checked_like_predicts_own(resnet_onnx, cxr4_rows, tmp_path):
    csv, images_dir, _ = cxr4_rows
    with pytest.raises(ModelFileError, match="has a calibration folded in already"):
        predict_csv([resnet_onnx], csv, images_dir=images_dir, calibration=TEMPERATURE)
    fitted_row = pd.read_csv(csv)["new_filename"][3]
    run = _run_dir(tmp_path / "fitted", _model("cxr_resnet"), calibration=Calibration(
        "temperature", {"temperature": 2.0}, CLASS_NAMES, (fitted_row,)))
    export_model(run, tmp_path / "fitted.keras", "keras", calibration=run)
    with pytest.raises(CalibrationError, match=r"fitted\.keras \(folded in\) was fitted on 1 of the rows"):
        predict_csv([tmp_path / "fitted.keras"], csv, images_dir=images_dir)


@pytest.mark.slow
def test_metadata_carries_the_recipes_class_names(tmp_path):
    names = ["clear", "opaque", "other"]
    run = _run_dir(tmp_path / "run", _model("cxr_resnet", num_classes=3),
                   recipe={"data": {"class_names": names, "filename_column": "file"}})
    for fmt, suffix in (("keras", ".keras"), ("torchscript", ".pt")):
        export_model(run, tmp_path / f"m{suffix}", fmt)
        meta = read_metadata(tmp_path / f"m{suffix}")
        assert (meta["class_names"], meta["image_size"], meta["filename_column"]) == (names, SIZE, "file")
        assert meta["calibration"] is None and meta["input"] == metadata.INPUT
    predictor = Predictor.load(tmp_path / "m.keras")  # no recipe.json beside it: the metadata says it all
    assert predictor.class_names == tuple(names) and predictor.filename_column == "file"


@pytest.mark.slow
def test_onnx_metadata_round_trip(resnet_onnx):
    from keras_cxr.export.onnx_model import OnnxPredictor

    predictor = OnnxPredictor.load(resnet_onnx)
    assert predictor.class_names == CLASS_NAMES and predictor.image_size == SIZE
    assert predictor.calibration.describe() == TEMPERATURE.describe()
    meta = read_metadata(resnet_onnx)
    assert meta["calibration"]["parameters"] == {"temperature": 0.6} and meta["architecture"] == "cxr_resnet"


def test_onnx_file_without_keras_cxr_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "other.onnx")
    with pytest.raises(ModelFileError, match=r"other\.onnx: no keras-cxr metadata"):
        Predictor.load(tmp_path / "other.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"broken\.onnx: cannot load the ONNX model"):
        Predictor.load(tmp_path / "broken.onnx")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return _run_dir(tmp_path_factory.mktemp("small") / "run", _model("cxr_resnet"))


@pytest.mark.parametrize("args, error, message", [
    (("m.onnx", "tflite"), ExportError, "format 'tflite': unknown export format (expected onnx, torchscript, keras)"),
    (("m.pt", "onnx"), ExportError, "m.pt: onnx exports are .onnx files"),
    (("m.onnx", "keras"), ExportError, "m.onnx: keras exports are .keras files"),
])
def test_bad_format_or_suffix(small_run, tmp_path, args, error, message):
    with pytest.raises(error) as caught:
        export_model(small_run, tmp_path / args[0], args[1])
    assert message in str(caught.value)
    assert not (tmp_path / args[0]).exists()


def test_missing_model_and_unusable_out(small_run, tmp_path):
    with pytest.raises(ModelFileError, match=r"nowhere: model file not found"):
        export_model(tmp_path / "nowhere", tmp_path / "m.onnx", "onnx")
    with pytest.raises(ModelFileError, match=r"model\.onnx: export takes a \.keras model file"):
        export_model(tmp_path / "model.onnx", tmp_path / "m.keras", "keras")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match=r"out .*file[/\\]m\.onnx: .*file is a file, not a folder"):
        export_model(small_run, tmp_path / "file" / "m.onnx", "onnx")
    (tmp_path / "dir.keras").mkdir()
    with pytest.raises(ExportError, match=r"dir\.keras is a folder; give a file name"):
        export_model(small_run, tmp_path / "dir.keras", "keras")
    exported = export_model(small_run, tmp_path / "new" / "deeper" / "m.keras", "keras")  # missing folders: made
    assert zipfile.is_zipfile(tmp_path / "new" / "deeper" / "m.keras") and exported["calibration"] is None
    assert [p.name for p in (tmp_path / "new" / "deeper").iterdir()] == ["m.keras"]  # no temporary left


def test_a_preprocessing_recipe_is_refused(tmp_path):
    run = _run_dir(tmp_path / "clahe", _model("cxr_resnet"), recipe={"augmentation": Augmentation(clahe=True).to_dict()})
    with pytest.raises(ExportError, match=r"model .*clahe[/\\]best\.keras: its recipe.json preprocesses images "
                                          r"\(CLAHE / unsharp\)"):
        export_model(run, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_calibration_for_other_classes_or_twice_is_refused(small_run, tmp_path):
    other = Calibration("temperature", {"temperature": 2.0}, ("a", "b", "c", "d"), ())
    with pytest.raises(CalibrationError, match="was fitted for classes"):
        export_model(small_run, tmp_path / "m.keras", "keras", calibration=other)
    export_model(small_run, tmp_path / "m.keras", "keras", calibration=TEMPERATURE)
    with pytest.raises(ExportError, match=r"calibration: .*m\.keras has a calibration folded in already "
                                          r"\(temperature T = 0\.6\)"):
        export_model(tmp_path / "m.keras", tmp_path / "again.keras", "keras", calibration=TEMPERATURE)
