"""Callbacks (WarmupCosine, MacroF1Checkpoint, SWA) and the helpers they use
(keras_cxr.predict, keras_cxr.io), on tiny 16x16 models."""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

import keras_cxr.callbacks.macro_f1_checkpoint as ckpt_module  # noqa: E402
import keras_cxr.callbacks.swa as swa_module  # noqa: E402
from keras_cxr.callbacks import SWA  # noqa: E402
from keras_cxr.callbacks import MacroF1Checkpoint  # noqa: E402
from keras_cxr.callbacks import WarmupCosine  # noqa: E402
from keras_cxr.callbacks import update_bn  # noqa: E402
from keras_cxr.callbacks import warmup_cosine_lr  # noqa: E402
from keras_cxr.io import atomic_write  # noqa: E402
from keras_cxr.io import save_model_atomic  # noqa: E402
from keras_cxr.io import write_csv_atomic  # noqa: E402
from keras_cxr.io import write_json_atomic  # noqa: E402
from keras_cxr.predict import predict_probs  # noqa: E402
from keras_cxr.predict import predict_with_labels  # noqa: E402

C = 4
BS = 8


# --------------------------------------------------------------------------- helpers


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(C, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inp, out)


class ArrayDataset(keras.utils.PyDataset):
    """Batches of (x, y[, w]); counts on_epoch_end calls."""

    def __init__(self, x, y=None, w=None, batch_size=BS):
        super().__init__()
        self.x, self.y, self.w, self.batch_size = x, y, w, batch_size
        self.epoch_ends = 0

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        if self.y is None:
            return (self.x[s],)
        if self.w is None:
            return self.x[s], self.y[s]
        return self.x[s], self.y[s], self.w[s]

    def on_epoch_end(self):
        self.epoch_ends += 1


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16, 16, 3)).astype(np.float32)
    ids = rng.integers(0, C, n)
    x[..., 0] += ids[:, None, None] * 0.5  # learnable signal
    return x, np.eye(C, dtype=np.float32)[ids]


def compile_model(model, lr=0.05, **opt_kwargs):
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9, **opt_kwargs), loss="categorical_crossentropy")
    return model


def weights_of(model, trainable_only=False):
    vs = model.trainable_variables if trainable_only else model.weights
    return [keras.ops.convert_to_numpy(v).copy() for v in vs]


def sk_macro(y, probs):
    return f1_score(np.asarray(y).argmax(-1), probs.argmax(-1), average="macro", zero_division=0)


class Recorder(keras.callbacks.Callback):
    """Records the LR of every batch, and weights/predictions at epoch ends."""

    def __init__(self, val=None):
        super().__init__()
        self.lrs, self.epoch_weights, self.epoch_trainable, self.epoch_probs, self.epoch_logs = [], {}, {}, {}, {}
        self.val = val
        self.iterations = None

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)
        self.lrs.append(float(keras.ops.convert_to_numpy(opt.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_weights[epoch] = weights_of(self.model)
        self.epoch_trainable[epoch] = weights_of(self.model, trainable_only=True)
        self.epoch_logs[epoch] = dict(logs or {})
        if self.val is not None:
            self.epoch_probs[epoch] = self.model.predict(self.val, verbose=0)
        self.iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))


# --------------------------------------------------------------------------- keras_cxr.io


def test_atomic_write_replaces_and_keeps_old_on_error(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    with atomic_write(p) as f:
        f.write("one")
    assert p.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("two")
            raise RuntimeError("boom")
    assert p.read_text() == "one"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]  # no temp left behind
    with atomic_write(p, "wb") as f:
        f.write(b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError):
        with atomic_write(p, "a"):
            pass


def test_json_csv_and_model_atomic(tmp_path):
    write_json_atomic({"f1": np.float32(0.5), "ids": np.arange(3)}, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text().startswith("{")
    import json

    assert json.loads((tmp_path / "m.json").read_text()) == {"f1": 0.5, "ids": [0, 1, 2]}
    df = pd.DataFrame({"new_filename": ["a.jpg", "b.jpg"], "normal": [1, 0]})
    write_csv_atomic(df, tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text() == "new_filename,normal\na.jpg,1\nb.jpg,0\n"
    model = tiny_model()
    save_model_atomic(model, tmp_path / "m.keras")
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []
    x, _ = make_data(4, 0)
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0), model.predict(x, verbose=0))

    class Broken:
        def save(self, path):
            with open(path, "w") as f:
                f.write("partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_model_atomic(Broken(), tmp_path / "m.keras")
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []
    keras.saving.load_model(tmp_path / "m.keras")  # the old file is intact


# --------------------------------------------------------------------------- keras_cxr.predict


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


# --------------------------------------------------------------------------- WarmupCosine


def test_warmup_cosine_lr_values():
    peak, lo, total, warm = 1e-3, 1e-5, 20, 4
    got = [warmup_cosine_lr(s, total, warm, peak, lo) for s in range(total + 2)]
    assert got[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert got[4] == pytest.approx(peak)
    # step 11: q = 7 / 15
    assert got[11] == pytest.approx(lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert got[19] == pytest.approx(lo)
    assert got[20] == got[21] == pytest.approx(lo)
    assert all(a >= b for a, b in zip(got[4:], got[5:]))
    # no warmup: first step at peak
    assert warmup_cosine_lr(0, 10, 0, peak, lo) == pytest.approx(peak)
    assert warmup_cosine_lr(9, 10, 0, peak, lo) == pytest.approx(lo)


def expected_schedule(total, warm, peak, lo):
    out = []
    for s in range(total):
        if s < warm:
            out.append(peak * (s + 1) / warm)
        else:
            q = (s - warm) / (total - 1 - warm)
            out.append(lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * q)))
    return out


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_warmup_cosine_in_fit(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    model = compile_model(tiny_model())
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = make_data(32, 2)  # 4 steps per epoch
    rec = Recorder()
    cb = WarmupCosine(peak_lr=1e-2, warmup_epochs=1.5, min_lr=1e-4)
    hist = model.fit(ArrayDataset(x, y), epochs=3, callbacks=[cb, rec], verbose=0)
    assert cb.total_steps == 12 and cb.warmup_steps == 6
    want = expected_schedule(12, 6, 1e-2, 1e-4)
    np.testing.assert_allclose(rec.lrs, want, rtol=1e-6)
    assert rec.lrs[0] == pytest.approx(1e-2 / 6) and rec.lrs[-1] == pytest.approx(1e-4)
    np.testing.assert_allclose(hist.history["lr"], [want[3], want[7], want[11]], rtol=1e-6)


def test_warmup_cosine_resume_from_initial_epoch():
    model = compile_model(tiny_model())
    x, y = make_data(32, 2)
    rec = Recorder()
    model.fit(ArrayDataset(x, y), epochs=3, initial_epoch=2, callbacks=[WarmupCosine(1e-2, 1.5, 1e-4), rec], verbose=0)
    np.testing.assert_allclose(rec.lrs, expected_schedule(12, 6, 1e-2, 1e-4)[8:], rtol=1e-6)


def test_warmup_cosine_explicit_lengths_and_errors():
    model = compile_model(tiny_model())
    x, y = make_data(16, 2)  # 2 steps per epoch
    rec = Recorder()
    model.fit(ArrayDataset(x, y), epochs=2, callbacks=[WarmupCosine(1e-2, 0, 0.0, total_epochs=4, steps_per_epoch=2), rec], verbose=0)
    np.testing.assert_allclose(rec.lrs, expected_schedule(8, 0, 1e-2, 0.0)[:4], rtol=1e-6)
    with pytest.raises(ValueError):
        WarmupCosine(1e-3, min_lr=1e-2)
    sched = keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.9)
    model.compile(optimizer=keras.optimizers.SGD(sched), loss="categorical_crossentropy")
    with pytest.raises(TypeError, match="float learning_rate"):
        model.fit(ArrayDataset(x, y), epochs=1, callbacks=[WarmupCosine(1e-2)], verbose=0)


# --------------------------------------------------------------------------- MacroF1Checkpoint


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


# --------------------------------------------------------------------------- SWA


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_swa_average_and_bn_statistics(tmp_path, policy):
    keras.mixed_precision.set_dtype_policy(policy)
    model = compile_model(tiny_model(), lr=0.05)
    x, y = make_data(32, 8)
    bn_ds = ArrayDataset(x[:24], y[:24], batch_size=8)  # 3 batches
    rec = Recorder()
    swa = SWA(start_epoch=1, bn_data=bn_ds, filepath=tmp_path / "swa.keras", verbose=0)
    model.fit(ArrayDataset(x, y), epochs=4, callbacks=[rec, swa], verbose=0)
    assert swa.n_averaged == 3 and swa.used and swa.bn_batches == 3
    # Averaging is exact: mean of the trainable weights at the ends of epochs 1, 2, 3.
    for i, v in enumerate(model.trainable_variables):
        want = np.mean([rec.epoch_trainable[e][i].astype(np.float64) for e in (1, 2, 3)], axis=0)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(keras.ops.convert_to_numpy(model.trainable_variables[0]), rec.epoch_trainable[3][0])
    # BN moving stats = plain average over bn batches of the batch mean / (biased) variance of BN's input.
    conv_out = keras.Model(model.input, model.get_layer("conv").output)
    means, variances = [], []
    for i in range(3):
        z = keras.ops.convert_to_numpy(conv_out(x[i * 8 : (i + 1) * 8], training=False)).astype(np.float64)
        means.append(z.mean(axis=(0, 1, 2)))
        variances.append(z.var(axis=(0, 1, 2)))
    bn = model.get_layer("bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), np.mean(variances, axis=0), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99
    # No optimizer step at train end, and the bn dataset's epoch was not advanced.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == rec.iterations == 16
    assert bn_ds.epoch_ends == 0
    # The saved SWA model is the in-memory one.
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "swa.keras").predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_update_bn_with_plain_iterable_and_steps():
    model = tiny_model()
    x, _ = make_data(32, 9)
    batches = [x[i : i + 8] for i in range(0, 32, 8)]
    n = update_bn(model, iter(batches), steps=2)
    assert n == 2
    conv_out = keras.Model(model.input, model.get_layer("conv").output)
    zs = [keras.ops.convert_to_numpy(conv_out(b)) for b in batches[:2]]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean), np.mean([z.mean(axis=(0, 1, 2)) for z in zs], axis=0), rtol=1e-5, atol=1e-6
    )
    # A frozen BN layer is neither reset nor updated.
    model.get_layer("bn").trainable = False
    before = keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean).copy()
    assert update_bn(model, batches) == 0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean), before)


def test_swa_lr_overrides_warmup_cosine():
    model = compile_model(tiny_model())
    x, y = make_data(16, 10)  # 2 steps per epoch
    rec = Recorder()
    model.fit(
        ArrayDataset(x, y),
        epochs=4,
        callbacks=[WarmupCosine(1e-2, 1, 1e-4), SWA(start_epoch=2, swa_lr=3e-3, verbose=0), rec],
        verbose=0,
    )
    want = expected_schedule(8, 2, 1e-2, 1e-4)[:4] + [3e-3] * 4
    np.testing.assert_allclose(rec.lrs, want, rtol=1e-6)


@pytest.mark.parametrize("swa_wins", [True, False])
def test_swa_selection_against_checkpoint(tmp_path, monkeypatch, swa_wins):
    model = compile_model(tiny_model(), lr=0.1)
    x, y = make_data(32, 11)
    xv, yv = make_data(16, 12)
    ckpt = MacroF1Checkpoint(ArrayDataset(xv, yv), filepath=tmp_path / "best.keras", verbose=0)
    rec = Recorder(val=xv)
    fake = 2.0 if swa_wins else -1.0
    monkeypatch.setattr(swa_module, "evaluate_macro_f1", lambda m, data: fake)
    swa = SWA(start_epoch=1, bn_data=ArrayDataset(x, y), filepath=tmp_path / "swa.keras", checkpoint=ckpt, verbose=1)
    model.fit(ArrayDataset(x, y), epochs=3, callbacks=[ckpt, rec, swa], verbose=0)
    assert swa.swa_score == fake and swa.n_averaged == 2
    swa_probs = keras.saving.load_model(tmp_path / "swa.keras").predict(xv, verbose=0)
    best_probs = keras.saving.load_model(tmp_path / "best.keras").predict(xv, verbose=0)
    if swa_wins:
        assert swa.used
        assert (ckpt.best, ckpt.best_source, ckpt.best_epoch) == (2.0, "swa", 2)
        np.testing.assert_allclose(best_probs, swa_probs, atol=1e-6)
        np.testing.assert_allclose(model.predict(xv, verbose=0), swa_probs, atol=1e-6)
    else:
        assert not swa.used
        assert ckpt.best_source == "epoch" and ckpt.best == max(ckpt.scores.values())
        np.testing.assert_allclose(best_probs, rec.epoch_probs[ckpt.best_epoch], atol=1e-6)
        # Pre-SWA weights (including BN statistics) are back in memory.
        for a, b in zip(weights_of(model), rec.epoch_weights[2]):
            np.testing.assert_array_equal(a, b)
        assert not np.allclose(swa_probs, rec.epoch_probs[2], atol=1e-5)


def test_swa_real_score_uses_checkpoint_validation_data():
    model = compile_model(tiny_model(), lr=0.1)
    x, y = make_data(32, 13)
    xv, yv = make_data(16, 14)
    ckpt = MacroF1Checkpoint(ArrayDataset(xv, yv), verbose=0)
    swa = SWA(start_epoch=0, bn_data=ArrayDataset(x, y), checkpoint=ckpt, verbose=0)
    model.fit(ArrayDataset(x, y), epochs=2, callbacks=[ckpt, swa], verbose=0)
    # Score the SWA weights independently (load them back if they were not kept).
    if not swa.used:
        for v, a in zip(model.trainable_variables, swa.averaged_weights()):
            v.assign(a.astype("float32"))
        update_bn(model, ArrayDataset(x, y))
    assert swa.swa_score == pytest.approx(sk_macro(yv, model.predict(xv, verbose=0)), abs=1e-12)
    assert swa.used == (swa.swa_score > max(ckpt.scores.values()))


def test_swa_not_reached_does_nothing():
    model = compile_model(tiny_model())
    x, y = make_data(16, 15)
    rec = Recorder()
    swa = SWA(start_epoch=5, verbose=0)
    model.fit(ArrayDataset(x, y), epochs=2, callbacks=[rec, swa], verbose=0)
    assert swa.n_averaged == 0 and not swa.used and swa.swa_score is None
    for a, b in zip(weights_of(model), rec.epoch_weights[1]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        SWA(start_epoch=-1)
    with pytest.raises(TypeError):
        SWA(start_epoch=1, checkpoint=keras.callbacks.EarlyStopping())


def test_nan_guard_records_the_first_non_finite_loss_and_stops():
    from keras_cxr.callbacks import NaNGuard

    class Model:
        stop_training = False

    guard = NaNGuard()
    guard.set_model(Model())
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 1.2})
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(0, {"loss": 0.9})
    assert not guard.tripped and not guard.model.stop_training
    guard.on_train_batch_end(1, {"loss": float("inf")})
    guard.on_train_batch_end(2, {"loss": float("nan")})
    assert guard.tripped and guard.model.stop_training
    assert (guard.epoch, guard.step, guard.loss) == (2, 2, float("inf"))
