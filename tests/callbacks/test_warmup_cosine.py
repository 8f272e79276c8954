"""WarmupCosine: the schedule's values by hand, inside fit (also mixed_float16), and resumed."""

import math

import keras
import numpy as np
import pytest

from keras_cxr.callbacks import WarmupCosine, warmup_cosine_lr
from tests.callbacks.support import ArrayDataset, Recorder, compile_model, expected_schedule, make_data, tiny_model


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


def test_warmup_longer_than_training_warns_and_ramps_for_the_whole_run():
    model = compile_model(tiny_model())
    x, y = make_data(16, 2)  # 2 steps per epoch
    rec = Recorder()
    with pytest.warns(UserWarning, match=r"warmup \(6.0 epochs = 12 steps\) is longer than training \(1 epochs = 2 steps\)"):
        model.fit(ArrayDataset(x, y), epochs=1, callbacks=[WarmupCosine(1e-2, 6, 1e-4), rec], verbose=0)
    np.testing.assert_allclose(rec.lrs, [1e-2 / 12, 2e-2 / 12], rtol=1e-6)
