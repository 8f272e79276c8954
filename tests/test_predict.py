"""Prediction: TTA views, model loading with the run's settings, `predict` and `evaluate` commands."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from keras_cxr import models
from keras_cxr.cli import main
from keras_cxr.data import Augmentation, CXRDataset, load_image, read_table
from keras_cxr.data.augment import affine_matrix, warp_affine
from keras_cxr.data.synthetic import ensure_default_dataset
from keras_cxr.predict import predict_probs, predict_with_labels
from keras_cxr.predictor import ModelFileError, Predictor, predict_csv
from keras_cxr.recipe import Data, Recipe
from keras_cxr.seeding import set_seed
from keras_cxr.tta import IDENTITY, parse_tta
from tests.callbacks.support import BS, ArrayDataset, C, make_data, tiny_model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def data_dir():
    return ensure_default_dataset()


def save_run(folder, recipe=None, num_classes=4, image_size=32, seed=0):
    """A run directory with an untrained model and (optionally) its recipe.json."""
    folder.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    model = models.build("cxr_resnet", num_classes=num_classes, image_size=image_size)
    model.save(folder / "best.keras")
    if recipe is not None:
        (folder / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    save_run(folder, Recipe())
    return folder


def test_parse_tta_lists_the_views():
    assert [v.name for v in parse_tta("rotate,zoom")] == ["identity", "rotate+5", "rotate-5", "zoom1.05"]
    assert parse_tta("") == parse_tta(None) == parse_tta("none") == (IDENTITY,)
    assert [v.name for v in parse_tta("zoom,zoom")] == ["identity", "zoom1.05"]
    with pytest.raises(ValueError, match="unknown view 'hflip'.*rotate, zoom.*left out on purpose"):
        parse_tta("rotate,hflip")


def test_views_rotate_and_zoom_about_the_centre():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 33, 33, 3), dtype=np.uint8)
    identity, plus5, minus5, zoom = parse_tta("rotate,zoom")
    assert identity.apply(batch) is batch
    np.testing.assert_array_equal(plus5.apply(batch)[1], warp_affine(batch[1], affine_matrix((33, 33), angle=5)))
    np.testing.assert_array_equal(minus5.apply(batch)[0], warp_affine(batch[0], affine_matrix((33, 33), angle=-5)))
    zoomed = zoom.apply(batch)
    assert zoomed.shape == batch.shape and not np.array_equal(zoomed, batch)
    # A 1.05x zoom about the centre keeps the centre pixel and pushes the corner out.
    np.testing.assert_array_equal(zoomed[:, 16, 16], batch[:, 16, 16])
    ramp = np.broadcast_to(np.arange(33, dtype=np.uint8)[None, :, None] * 7, (1, 33, 33, 3)).copy()
    assert zoom.apply(ramp)[0, 16, 1, 0] > ramp[0, 16, 1, 0]  # left edge now shows pixels further in


def test_tta_prediction_is_the_mean_over_views(run_dir, data_dir):
    model = keras.saving.load_model(run_dir / "best.keras")
    table = read_table(data_dir / "val.csv")
    dataset = CXRDataset(table, 32, batch_size=16)
    views = parse_tta("rotate,zoom")
    with_tta = predict_probs(model, dataset, views=views)
    x = np.stack([load_image(p, 32) for p in table.paths])
    by_hand = np.mean([model.predict(v.apply(x), verbose=0) for v in views], axis=0)
    np.testing.assert_allclose(with_tta, by_hand, atol=1e-6)
    assert np.abs(with_tta - predict_probs(model, dataset)).max() > 1e-4  # the views change the answer


def test_predictor_applies_the_recipes_preprocessing(tmp_path, data_dir):
    recipe = Recipe(augmentation=Augmentation(clahe=True))
    model = save_run(tmp_path / "clahe", recipe)
    predictor = Predictor.load(tmp_path / "clahe")  # a run directory means its best.keras
    assert predictor.preprocessing.clahe and predictor.image_size == 32
    probs = predict_csv([predictor], data_dir / "val.csv")
    table = read_table(data_dir / "val.csv")
    x = np.stack([Augmentation(clahe=True).preprocess(load_image(p, 32)) for p in table.paths])
    np.testing.assert_allclose(probs.values, model.predict(x, verbose=0), atol=1e-6)
    assert probs.filenames == table.filenames
    # Without recipe.json the same model sees unprocessed images.
    (tmp_path / "clahe" / "recipe.json").unlink()
    plain = predict_csv([tmp_path / "clahe" / "best.keras"], data_dir / "val.csv")
    assert np.abs(plain.values - probs.values).max() > 1e-4


def test_several_models_are_averaged_at_their_own_sizes(tmp_path, data_dir):
    small = save_run(tmp_path / "a", Recipe(), image_size=32, seed=1)
    large = save_run(tmp_path / "b", Recipe(), image_size=48, seed=2)
    probs = predict_csv([tmp_path / "a", tmp_path / "b" / "best.keras"], data_dir / "test.csv")
    table = read_table(data_dir / "test.csv")
    expected = np.mean([
        m.predict(np.stack([load_image(p, s) for p in table.paths]), verbose=0) for m, s in ((small, 32), (large, 48))
    ], axis=0)
    np.testing.assert_allclose(probs.values, expected, atol=1e-6)


def test_mixed_float16_model_keeps_its_policy_when_loaded_under_float32(tmp_path, data_dir):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    save_run(tmp_path / "mixed", Recipe())
    keras.mixed_precision.set_dtype_policy("float32")
    predictor = Predictor.load(tmp_path / "mixed")
    convs = [l for l in predictor.model.get_layer("backbone").layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(l.compute_dtype == "float16" for l in convs)
    table = read_table(data_dir / "val.csv")
    probs = predict_probs(predictor.model, predictor.dataset(table, 16))
    assert probs.dtype == np.float32
    x = np.stack([load_image(p, 32) for p in table.paths])
    np.testing.assert_allclose(probs, predictor.model.predict(x, verbose=0), atol=1e-6)


def test_model_errors_are_clear(tmp_path, data_dir):
    with pytest.raises(ModelFileError, match="model file not found"):
        Predictor.load(tmp_path / "nope.keras")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFileError, match="corrupt.keras: not a Keras model archive"):
        Predictor.load(corrupt)
    save_run(tmp_path / "three", Recipe(), num_classes=3)
    with pytest.raises(ModelFileError, match=r"3 outputs but .*recipe.json names 4 classes"):
        Predictor.load(tmp_path / "three")
    save_run(tmp_path / "two_class", Recipe(data=Data(class_names=("normal", "sick"))), num_classes=2)
    save_run(tmp_path / "four", Recipe())
    with pytest.raises(ModelFileError, match="must share class names"):
        predict_csv([tmp_path / "two_class", tmp_path / "four"], data_dir / "val.csv")


def test_predict_command_writes_probs_and_submission_in_csv_order(run_dir, data_dir, tmp_path):
    shuffled = pd.read_csv(data_dir / "test.csv").sample(frac=1.0, random_state=3)
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    result = invoke("predict", run_dir, "--csv", tmp_path / "shuffled.csv", "--images", data_dir / "images",
                    "--tta", "rotate", "--out", tmp_path / "p.csv", "--submission", tmp_path / "s.csv", "--quiet")
    assert result.exit_code == 0, result.output
    assert f"{len(shuffled)} rows" in result.output
    probs, sub = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(tmp_path / "s.csv")
    assert list(probs.new_filename) == list(shuffled.new_filename) == list(sub.new_filename)
    assert list(sub.columns) == ["new_filename", "normal", "bacteria", "virus", "COVID-19"]
    values = sub.iloc[:, 1:].to_numpy()
    assert values.dtype.kind == "i" and (values.sum(axis=1) == 1).all() and set(np.unique(values)) == {0, 1}
    np.testing.assert_array_equal(values.argmax(1), probs.iloc[:, 1:].to_numpy().argmax(1))


def test_predict_command_errors(run_dir, data_dir, tmp_path):
    result = invoke("predict", run_dir, "--csv", data_dir / "val.csv", "--tta", "flip", "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "unknown view 'flip'" in result.output
    result = invoke("predict", tmp_path / "missing.keras", "--csv", data_dir / "val.csv", "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "missing.keras: model file not found" in result.output
    result = invoke("predict", run_dir, "--csv", data_dir / "val.csv", "--images", tmp_path,
                    "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "image not found" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p.csv").exists()


def test_evaluate_command(run_dir, data_dir, tmp_path):
    table = read_table(data_dir / "val.csv")
    probs = np.full((len(table), 4), 0.1)
    probs[np.arange(len(table)), table.class_ids] = 0.7  # every row right
    probs[0] = [0.1, 0.1, 0.1, 0.7] if table.class_ids[0] != 3 else [0.7, 0.1, 0.1, 0.1]  # one wrong
    frame = pd.DataFrame(probs, columns=list(table.class_names))
    frame.insert(0, "new_filename", table.filenames)
    frame.iloc[::-1].to_csv(tmp_path / "p.csv", index=False)  # any row order
    result = invoke("evaluate", tmp_path / "p.csv", "--labels", data_dir / "val.csv", "--json",
                    "--plot", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    from sklearn.metrics import f1_score

    assert summary["macro_f1"] == pytest.approx(f1_score(table.class_ids, probs.argmax(1), average="macro"))
    assert summary["accuracy"] == pytest.approx(1 - 1 / len(table))
    assert np.trace(summary["confusion_matrix"]) == len(table) - 1
    assert summary["ece"] == pytest.approx(abs((1 - 1 / len(table)) - 0.7))  # one bin at confidence 0.7
    assert (tmp_path / "plots" / "confusion.png").stat().st_size > 1000
    text = invoke("evaluate", tmp_path / "p.csv", "--labels", data_dir / "val.csv").output
    assert text.startswith(f"Macro-F1 {summary['macro_f1']:.4f}") and "COVID-19" in text

    frame.iloc[:-2].to_csv(tmp_path / "short.csv", index=False)
    result = invoke("evaluate", tmp_path / "short.csv", "--labels", data_dir / "val.csv")
    assert result.exit_code == 2
    assert "filenames differ: 2 row(s) of" in result.output and table.filenames[-1] in result.output


def test_predict_probs_order_labels_and_forms():
    model = tiny_model()
    x, y = make_data(20, 1)
    expected = model.predict(x, batch_size=BS, verbose=0)
    ds = ArrayDataset(x, y)
    probs, labels = predict_with_labels(model, ds)
    assert probs.dtype == np.float32 and probs.shape == (20, C)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_array_equal(labels, y)
    assert ds.epoch_ends == 0
    # (x,) batches, a plain list of batches, a generator, a numpy array, verbose progbar.
    p2, l2 = predict_with_labels(model, ArrayDataset(x))
    assert l2 is None
    np.testing.assert_allclose(p2, expected, atol=1e-6)
    batches = [(x[i : i + 6], y[i : i + 6], np.ones(len(x[i : i + 6]))) for i in range(0, 20, 6)]
    p3, l3 = predict_with_labels(model, iter(batches), verbose=1)
    np.testing.assert_allclose(p3, expected, atol=1e-6)
    np.testing.assert_array_equal(l3, y)
    np.testing.assert_allclose(predict_probs(model, x, batch_size=7), expected, atol=1e-6)
    np.testing.assert_allclose(predict_probs(model, ds, steps=2), expected[:16], atol=1e-6)
