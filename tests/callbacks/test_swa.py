"""SWA: the weight average, recomputed BatchNorm statistics, and keeping it only when it wins."""


import keras
import numpy as np
import pytest

import keras_cxr.callbacks.swa as swa_module
from keras_cxr.callbacks import SWA, MacroF1Checkpoint, WarmupCosine, update_bn
from tests.callbacks.support import (
    ArrayDataset,
    Recorder,
    compile_model,
    expected_schedule,
    make_data,
    sk_macro,
    tiny_model,
    weights_of,
)


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
