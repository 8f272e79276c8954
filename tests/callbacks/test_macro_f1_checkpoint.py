"""MacroF1Checkpoint: sklearn's Macro-F1 in the logs, strict-improvement saves, EMA weights."""


import keras
import numpy as np
import pytest

import keras_cxr.callbacks.macro_f1_checkpoint as ckpt_module
from keras_cxr.callbacks import MacroF1Checkpoint
from tests.callbacks.support import (
    ArrayDataset,
    Recorder,
    compile_model,
    make_data,
    sk_macro,
    tiny_model,
    weights_of,
)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_checkpoint_logs_sklearn_value_and_saves_best(tmp_path, policy):
    keras.mixed_precision.set_dtype_policy(policy)
    model = compile_model(tiny_model(), lr=0.1)
    x, y = make_data(32, 3)
    xv, yv = make_data(20, 4)
    path = tmp_path / "best.keras"
    ckpt = MacroF1Checkpoint(ArrayDataset(xv, yv, batch_size=6), filepath=path, verbose=0)
    rec = Recorder(val=xv)
    hist = model.fit(ArrayDataset(x, y), epochs=4, callbacks=[ckpt, rec], verbose=0)
    scores = hist.history["val_macro_f1"]
    assert len(scores) == 4
    for e in range(4):
        assert scores[e] == pytest.approx(sk_macro(yv, rec.epoch_probs[e]), abs=1e-12)
        assert rec.epoch_logs[e]["val_macro_f1"] == scores[e]
    assert ckpt.scores == dict(enumerate(scores))
    assert ckpt.best == max(scores)
    assert ckpt.best_epoch == int(np.argmax(scores))  # first epoch reaching the max
    assert ckpt.best_source == "epoch"
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(xv, verbose=0), rec.epoch_probs[ckpt.best_epoch], atol=1e-6)


def test_checkpoint_saves_only_on_strict_improvement_and_feeds_early_stopping(tmp_path, monkeypatch):
    script = iter([0.5, 0.6, 0.6, 0.55, 0.9, 0.95])
    monkeypatch.setattr(ckpt_module, "evaluate_macro_f1", lambda model, data: next(script))
    saves = []
    real_save = ckpt_module.save_model_atomic
    monkeypatch.setattr(ckpt_module, "save_model_atomic", lambda m, p: saves.append(p) or real_save(m, p))
    model = compile_model(tiny_model())
    x, y = make_data(16, 5)
    ckpt = MacroF1Checkpoint(ArrayDataset(x, y), filepath=tmp_path / "b.keras", verbose=1)
    stop = keras.callbacks.EarlyStopping(monitor="val_macro_f1", mode="max", patience=2)
    hist = model.fit(ArrayDataset(x, y), epochs=6, callbacks=[ckpt, stop], verbose=0)
    # epochs 0..3: best 0.6 at epoch 1; epochs 2 (equal) and 3 do not improve -> stop after epoch 3.
    assert hist.history["val_macro_f1"] == [0.5, 0.6, 0.6, 0.55]
    assert stop.stopped_epoch == 3
    assert len(saves) == 2
    assert (ckpt.best, ckpt.best_epoch, ckpt.best_source) == (0.6, 1, "epoch")


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_checkpoint_uses_ema_weights(tmp_path, policy):
    keras.mixed_precision.set_dtype_policy(policy)
    model = tiny_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True, ema_momentum=0.5),
        loss="categorical_crossentropy",
    )
    x, y = make_data(32, 6)
    xv, yv = make_data(20, 7)
    before = Recorder(val=xv)  # raw weights, recorded before the checkpoint swaps
    ckpt = MacroF1Checkpoint(ArrayDataset(xv, yv), filepath=tmp_path / "b.keras", verbose=0)
    after = Recorder(val=xv)

    class EMAProbe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ema_probs = {}

        def on_epoch_end(self, epoch, logs=None):
            self.ema_probs[epoch] = ema_predictions(self.model, xv)

    probe = EMAProbe()
    hist = model.fit(ArrayDataset(x, y), epochs=2, callbacks=[before, probe, ckpt, after], verbose=0)
    for e in range(2):
        # Raw weights are back in the model after the checkpoint's evaluation.
        for a, b in zip(before.epoch_trainable[e], after.epoch_trainable[e]):
            np.testing.assert_array_equal(a, b)
        # The logged score is the EMA model's (whose predictions differ from the raw model's).
        assert not np.allclose(probe.ema_probs[e], before.epoch_probs[e], atol=1e-4)
        assert hist.history["val_macro_f1"][e] == pytest.approx(sk_macro(yv, probe.ema_probs[e]), abs=1e-12)
    # The checkpoint holds the EMA weights of its epoch.
    saved = keras.saving.load_model(tmp_path / "b.keras").predict(xv, verbose=0)
    np.testing.assert_allclose(saved, probe.ema_probs[ckpt.best_epoch], atol=1e-6)
    # At the end fit loads the EMA into the model (finalize_variable_values).
    np.testing.assert_allclose(model.predict(xv, verbose=0), probe.ema_probs[1], atol=1e-6)


def ema_predictions(model, x):
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    assert opt.use_ema
    saved = weights_of(model, trainable_only=True)
    for v, a in zip(opt._trainable_variables, opt._model_variables_moving_average):
        v.assign(a)
    out = model.predict(x, verbose=0)
    for v, s in zip(model.trainable_variables, saved):
        v.assign(s)
    return out
