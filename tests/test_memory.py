"""`fit_recipe` must not keep training steps' activations alive.

Keras on torch leaves the inputs of list-input layers (`cxr_resnet`'s `Add`s)
in reference cycles every step; only Python's cyclic collector frees them,
and in a long run it does not run a full collection for hours, so RSS grew by
gigabytes (see `keras_cxr.callbacks.CollectCycles`). Automatic collection is
switched off here, so every cycle survives unless `fit_recipe` frees it: the
test is deterministic.
"""

import gc

import pytest
import torch

from keras_cxr import training
from keras_cxr.data import Augmentation, Mixing
from keras_cxr.recipe import SWA, Data, Loss, Model, Optimizer, Recipe, Schedule


def _tensors_with_graph():
    """Live tensors that hold an autograd graph (activations of a training step)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None)


@pytest.mark.slow
def test_fit_recipe_frees_each_steps_activations(tmp_path, monkeypatch):
    counts = []

    class Probe(training.MacroF1Checkpoint):
        # Runs right after the epoch's last batch, before its own prediction.
        def on_epoch_end(self, epoch, logs=None):
            counts.append(_tensors_with_graph())
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(training, "MacroF1Checkpoint", Probe)
    recipe = Recipe(
        data=Data(data_dir=None, workers=1),
        model=Model(name="cxr_resnet", image_size=32, dropout=0.0),
        augmentation=Augmentation.off(),
        mixing=Mixing(mixup_p=0.0, cutmix_p=0.0),
        loss=Loss(alpha=None, gamma=0.0),
        optimizer=Optimizer(learning_rate=1e-3),
        schedule=Schedule(warmup_epochs=0, min_lr=1e-5),
        swa=SWA(start_epoch=None),
        precision="float32",
        epochs=2,
        batch_size=32,
        seed=3,
    )
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        training.fit_recipe(recipe, tmp_path / "run", verbose=0)
    finally:
        if was_enabled:
            gc.enable()
    # Without the fix: ~8 steps x 9 Add inputs per epoch, accumulating.
    assert counts == [0, 0]
    assert gc.get_freeze_count() == 0  # the heap frozen for cheap collections is released


def test_collect_cycles_callback_frees_cycles_and_unfreezes():
    import keras
    import numpy as np

    from keras_cxr.callbacks import CollectCycles

    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Add()([inputs, hidden]))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(64) % 2]

    counts = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            counts.append(_tensors_with_graph())

    gc.disable()
    try:
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[CollectCycles(), Count()])
        with_callback = list(counts)
        counts.clear()
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[Count()])
        without_callback = list(counts)
    finally:
        gc.enable()
        gc.collect()
    assert with_callback == [0, 0]
    assert without_callback[-1] > 0  # the Keras cycles this callback exists for
    assert gc.get_freeze_count() == 0
