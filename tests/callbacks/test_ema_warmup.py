"""EMAWarmup: the momentum rule by hand, the optimizer's average replayed step by step, resumed fits."""

import keras
import numpy as np
import pytest

from keras_cxr.callbacks import EMAWarmup, ema_warmup_momentum
from tests.callbacks.support import ArrayDataset, compile_model, make_data, tiny_model


def test_ema_warmup_momentum_values():
    assert ema_warmup_momentum(0, 0.999) == pytest.approx(0.1)
    assert ema_warmup_momentum(10, 0.999) == pytest.approx(11 / 20)
    assert ema_warmup_momentum(1000, 0.999) == pytest.approx(1001 / 1010)
    assert ema_warmup_momentum(10**6, 0.999) == pytest.approx(0.999)  # capped
    assert ema_warmup_momentum(5, 0.9, warmup_steps=4) == pytest.approx(0.6667, abs=1e-4)


class _StepWeights(keras.callbacks.Callback):
    """The head kernel after every optimizer step."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(keras.ops.convert_to_numpy(self.model.get_layer("head").kernel).copy())


def _replay(kernels, momenta):
    """Keras's recursion: the first step copies, then `m * avg + (1 - m) * w`."""
    average = kernels[0]
    for w, m in zip(kernels[1:], momenta[1:]):
        average = m * average + (1 - m) * w
    return average


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_average_follows_the_warmed_up_momentum(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = compile_model(tiny_model(), use_ema=True, ema_momentum=0.999)
        x, y = make_data(64, 3)  # 8 steps per epoch
        steps = _StepWeights()
        model.fit(ArrayDataset(x, y), epochs=3, callbacks=[EMAWarmup(), steps], verbose=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    kernels = steps.kernels
    assert len(kernels) == 24
    warmed = _replay(kernels, [ema_warmup_momentum(t, 0.999) for t in range(24)])
    plain = _replay(kernels, [0.999] * 24)
    # fit() ends by loading the EMA into the model (finalize_variable_values).
    got = keras.ops.convert_to_numpy(model.get_layer("head").kernel)
    np.testing.assert_allclose(got, warmed, rtol=1e-5, atol=1e-6)
    # Keras's plain 0.999 would have kept ~98% of the first step's weights.
    assert np.abs(plain - kernels[0]).max() < 0.05 * np.abs(kernels[-1] - kernels[0]).max()
    assert np.abs(warmed - kernels[-1]).max() < np.abs(warmed - kernels[0]).max()
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    assert opt.ema_momentum == 0.999  # put back for get_config / saving


class _Momenta(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.momenta = []

    def on_train_batch_begin(self, batch, logs=None):
        self.momenta.append(self.model.optimizer.ema_momentum)


def test_a_second_fit_continues_the_warmup():
    x, y = make_data(64, 3)
    model = compile_model(tiny_model(), use_ema=True, ema_momentum=0.99)
    seen = _Momenta()
    model.fit(ArrayDataset(x, y), epochs=2, callbacks=[EMAWarmup(), seen], verbose=0)
    model.fit(ArrayDataset(x, y), epochs=4, initial_epoch=2, callbacks=[EMAWarmup(), seen], verbose=0)
    np.testing.assert_allclose(seen.momenta, [ema_warmup_momentum(t, 0.99) for t in range(32)])
    assert seen.momenta[-1] == pytest.approx(32 / 41)


def test_no_ema_no_change():
    model = compile_model(tiny_model())
    x, y = make_data(16, 3)
    model.fit(ArrayDataset(x, y), epochs=1, callbacks=[EMAWarmup()], verbose=0)
    assert model.optimizer.ema_momentum == 0.99  # Keras's default, untouched
    with pytest.raises(ValueError, match="momentum"):
        EMAWarmup(momentum=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        EMAWarmup(warmup_steps=1)
