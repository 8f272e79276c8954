"""`fit_recipe` end to end on the synthetic data: the run directory and its promises."""

import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from keras_cxr.data import Augmentation, Mixing, read_table
from keras_cxr.recipe import SWA, Data, EarlyStopping, Loss, Model, Optimizer, Recipe, Schedule
from keras_cxr.training import RunDirectoryError, fit_recipe
from tests.models.test_pretrained import caches  # noqa: F401  - a fixture


def tiny_recipe(**changes):
    recipe = Recipe(
        data=Data(data_dir=None, workers=1),
        model=Model(name="cxr_resnet", image_size=32, dropout=0.1),
        augmentation=Augmentation(erasing_p=0.2),
        mixing=Mixing(mixup_p=0.3, cutmix_p=0.3),
        loss=Loss(alpha=(1.0, 1.0, 1.0, 2.0), gamma=1.0, label_smoothing=0.05),
        optimizer=Optimizer(learning_rate=2e-3, weight_decay=1e-2),
        schedule=Schedule(warmup_epochs=1, min_lr=1e-5),
        swa=SWA(start_epoch=2),
        precision="float32",
        epochs=3,
        batch_size=32,
        seed=7,
    )
    return recipe.replace(**changes)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    recipe = tiny_recipe()
    out = tmp_path_factory.mktemp("run")
    metrics = fit_recipe(recipe, out, verbose=0)
    return recipe, out, metrics


@pytest.mark.slow
def test_run_directory_holds_every_artifact(run):
    recipe, out, metrics = run
    for name in ("best.keras", "swa.keras", "history.csv", "val_probs.csv", "metrics.json",
                 "recipe.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert Recipe.from_dict(json.loads((out / "recipe.json").read_text())) == recipe
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert {"loss", "lr", "val_macro_f1"} <= set(history.columns)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["epochs_run"] == 3 and saved["image_size"] == 32
    assert saved["train_images"] == 232 and saved["val_images"] == 60
    assert saved["train_images_per_second"] > 0 and saved["seconds"] > 0
    assert saved["swa"]["models_averaged"] == 2
    assert saved["best_source"] in ("epoch", "swa")
    assert np.array(saved["validation"]["confusion_matrix"]).sum() == 60


@pytest.mark.slow
def test_val_probs_match_a_fresh_prediction_of_best_keras(run, tmp_path):
    recipe, out, metrics = run
    val_probs = pd.read_csv(out / "val_probs.csv")
    table = read_table(metrics_data_dir(out) / "val.csv")
    assert list(val_probs["new_filename"]) == list(table.filenames)
    assert list(val_probs.columns[1:]) == list(recipe.data.class_names)
    np.testing.assert_allclose(val_probs.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
    # A fresh process that only imports keras_cxr reloads best.keras and predicts.
    script = (
        "import sys, numpy as np, keras, keras_cxr\n"
        "from keras_cxr.data import read_table, load_image\n"
        "t = read_table(sys.argv[2])\n"
        "x = np.stack([load_image(p, 32) for p in t.paths])\n"
        "np.save(sys.argv[3], keras.saving.load_model(sys.argv[1]).predict(x, verbose=0))\n"
    )
    target = tmp_path / "probs.npy"
    subprocess.run([sys.executable, "-c", script, str(out / "best.keras"),
                    str(metrics_data_dir(out) / "val.csv"), str(target)], check=True)
    np.testing.assert_allclose(np.load(target), val_probs.iloc[:, 1:].to_numpy(), atol=1e-6)
    # The recorded Macro-F1 is the one these probabilities give.
    from sklearn.metrics import f1_score

    f1 = f1_score(table.class_ids, val_probs.iloc[:, 1:].to_numpy().argmax(1), average="macro")
    assert metrics["val_macro_f1"] == pytest.approx(f1)


def metrics_data_dir(out):
    from keras_cxr.training import resolve_data_dir

    return resolve_data_dir(Recipe.from_dict(json.loads((out / "recipe.json").read_text())).data)


@pytest.mark.slow
def test_same_seed_gives_identical_val_probs(run, tmp_path):
    recipe, out, _ = run
    fit_recipe(recipe, tmp_path / "again", verbose=0)
    assert (tmp_path / "again" / "val_probs.csv").read_bytes() == (out / "val_probs.csv").read_bytes()
    fit_recipe(recipe.replace(seed=8), tmp_path / "other", verbose=0)
    assert (tmp_path / "other" / "val_probs.csv").read_bytes() != (out / "val_probs.csv").read_bytes()


@pytest.mark.slow
def test_early_stopping_and_no_swa(tmp_path):
    recipe = tiny_recipe(swa=SWA(), epochs=6, early_stopping=EarlyStopping(patience=1, min_delta=1.0))
    metrics = fit_recipe(recipe, tmp_path, verbose=0)
    # min_delta 1.0 means no epoch ever counts as an improvement: stop after patience + 1 epochs.
    assert metrics["epochs_run"] == 2 and metrics["swa"] is None
    assert not (tmp_path / "swa.keras").exists()


@pytest.mark.slow
def test_mixed_float16_with_ema_trains_and_saves_float32_probabilities(tmp_path, monkeypatch):
    import keras_cxr.training
    from keras_cxr.callbacks import EMAWarmup, ema_warmup_momentum

    momenta = []

    class RecordingWarmup(EMAWarmup):
        def on_train_batch_begin(self, batch, logs=None):
            super().on_train_batch_begin(batch, logs)
            momenta.append(self.model.optimizer.inner_optimizer.ema_momentum)

    monkeypatch.setattr(keras_cxr.training, "EMAWarmup", RecordingWarmup)
    recipe = tiny_recipe(precision="mixed_float16", epochs=2, model=Model(name="cxr_resnet", image_size=32),
                         optimizer=Optimizer(learning_rate=2e-3, ema=True, ema_momentum=0.9))
    metrics = fit_recipe(recipe, tmp_path, verbose=0)
    # the recipe's EMA is warmed up: 0.1, 2/11, ... capped at 0.9
    assert len(momenta) >= 2
    np.testing.assert_allclose(momenta, [ema_warmup_momentum(t, 0.9) for t in range(len(momenta))])
    assert metrics["precision"] == "mixed_float16"
    model = keras.saving.load_model(tmp_path / "best.keras")
    assert model.output.dtype == "float32"
    assert np.isfinite(pd.read_csv(tmp_path / "val_probs.csv").iloc[:, 1:].to_numpy()).all()


@pytest.mark.slow
def test_auto_precision_trains_in_bfloat16_on_a_bfloat16_cpu(tmp_path, monkeypatch, capsys):
    import torch

    import keras_cxr
    from keras_cxr import precision
    from keras_cxr.data import CXRDataset
    from keras_cxr.predict import predict_probs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    metrics = fit_recipe(tiny_recipe(precision="auto", epochs=2), tmp_path, verbose=1)
    assert metrics["precision"] == "mixed_bfloat16"
    assert "Precision: mixed_bfloat16 (auto: this CPU has bfloat16 instructions" in capsys.readouterr().out
    model = keras_cxr.load_model(tmp_path / "best.keras")
    convs = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and {layer.compute_dtype for layer in convs} == {"bfloat16"}
    assert {w.dtype for w in model.weights} == {"float32"}  # variables stay float32
    assert model.output.dtype == "float32"
    # The checkpoint reloads to the probabilities the run wrote for validation when it runs the code fit ran
    # (keras_cxr.accel, as `keras-cxr predict` does); Keras's own code agrees to bfloat16's rounding only.
    val = read_table(metrics_data_dir(tmp_path) / "val.csv")
    written = pd.read_csv(tmp_path / "val_probs.csv").iloc[:, 1:].to_numpy()
    with keras_cxr.accel.enabled():
        probs = predict_probs(model, CXRDataset(val, 32, batch_size=32))
    np.testing.assert_allclose(probs, written, atol=1e-6)
    plain = predict_probs(keras.saving.load_model(tmp_path / "best.keras"), CXRDataset(val, 32, batch_size=32))
    np.testing.assert_allclose(plain, written, atol=2e-2)


def test_refuses_to_overwrite_a_finished_run(run):
    recipe, out, _ = run
    with pytest.raises(RunDirectoryError, match="already holds a finished run"):
        fit_recipe(recipe, out, verbose=0)


def test_bad_data_dir_fails_before_training(tmp_path):
    (tmp_path / "data").mkdir()
    recipe = tiny_recipe(data=Data(data_dir=str(tmp_path / "data")))
    with pytest.raises(Exception, match=r"train.csv"):
        fit_recipe(recipe, tmp_path / "out", verbose=0)
    assert not (tmp_path / "out" / "best.keras").exists()


def test_unfetchable_pretrained_weights_fail_before_the_run_directory(caches):  # noqa: F811
    """Offline and not cached: one WeightsUnavailable, before any output (the data are not even read)."""
    from keras_cxr.models.pretrained import WeightsUnavailable

    recipe = tiny_recipe(model=Model(name="convnext_t", image_size=32, weights="imagenet"))
    with pytest.raises(WeightsUnavailable, match="convnext_tiny_notop.h5"):
        fit_recipe(recipe, caches / "out", verbose=0)
    assert not (caches / "out").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_with_its_epoch_and_step_and_keeps_the_best(tmp_path, monkeypatch):
    from keras_cxr.data import dataset as dataset_module
    from keras_cxr.training import TrainingDiverged

    recipe = tiny_recipe(epochs=3, swa=SWA(start_epoch=1))
    fit_recipe(recipe.replace(epochs=1, swa=SWA()), tmp_path / "one_epoch", verbose=0)

    real = dataset_module.CXRDataset.__getitem__

    def poisoned(self, index):
        batch = real(self, index)
        if self.training and self.epoch == 1 and index == 2:  # epoch 2, step 3 as Keras counts
            batch = (batch[0], np.full_like(batch[1], np.nan), *batch[2:])
        return batch

    monkeypatch.setattr(dataset_module.CXRDataset, "__getitem__", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 3 of 8; .*best.keras "
                                               r"\(epoch 1, val Macro-F1 0\.\d{4}\) is intact"):
        fit_recipe(recipe, out, verbose=0)
    assert not (out / "metrics.json").exists() and (out / "history.csv").exists()
    # best.keras is epoch 1's model: the same as a one-epoch run with this seed.
    table = read_table(metrics_data_dir(out) / "val.csv")
    x = np.stack([__import__("keras_cxr").data.load_image(p, 32) for p in table.paths])
    kept = keras.saving.load_model(out / "best.keras").predict(x, verbose=0)
    reference = keras.saving.load_model(tmp_path / "one_epoch" / "best.keras").predict(x, verbose=0)
    assert np.isfinite(kept).all()
    np.testing.assert_allclose(kept, reference, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("workers, processes", [(2, False), (2, True)])
def test_loader_workers_do_not_change_the_results(run, tmp_path, workers, processes):
    recipe, out, _ = run
    parallel = recipe.replace(data=recipe.data.replace(workers=workers, use_multiprocessing=processes))
    fit_recipe(parallel, tmp_path / "parallel", verbose=0)
    assert (tmp_path / "parallel" / "val_probs.csv").read_bytes() == (out / "val_probs.csv").read_bytes()
