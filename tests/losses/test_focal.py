import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_cxr.losses import FocalLoss  # noqa: E402

C = 4
EPS = 1e-7


def ref_focal(y, p, alpha=None, gamma=2.0, eps=0.0, w=None):
    """Hand-written NumPy reference of the improved focal loss (sum_over_batch_size)."""
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), EPS, 1.0)
    n, c = y.shape
    per = np.zeros(n)
    for i in range(n):
        t = np.array([(1 - eps) * y[i, k] + eps / (c - 1) * (1 - y[i, k]) for k in range(c)])
        ce = -sum(t[k] * np.log(p[i, k]) for k in range(c))
        p_t = sum(y[i, k] * p[i, k] for k in range(c))
        a_t = 1.0 if alpha is None else sum(y[i, k] * alpha[k] for k in range(c))
        per[i] = a_t * (1 - p_t) ** gamma * ce
    if w is None:
        w = np.ones(n)
    return float(np.sum(per * np.asarray(w)) / n), per


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, C)).astype(np.float32) * 2
    probs = softmax(logits).astype(np.float32)
    onehot = np.eye(C, dtype=np.float32)[rng.integers(0, C, 8)]
    lam = rng.uniform(0.2, 0.8, size=(8, 1)).astype(np.float32)
    soft = lam * onehot + (1 - lam) * np.eye(C, dtype=np.float32)[rng.integers(0, C, 8)]
    w = rng.uniform(0.1, 2.0, size=8).astype(np.float32)
    return logits, probs, onehot, soft, w


@pytest.mark.parametrize("targets", ["onehot", "soft"])
@pytest.mark.parametrize(
    "alpha,gamma,eps",
    [(None, 2.0, 0.0), ([1.0, 1.5, 2.0, 12.0], 3.5, 0.12), (None, 0.0, 0.1), ([0.5, 1.0, 2.0, 4.0], 1.0, 0.0)],
)
def test_matches_numpy_reference(batch, targets, alpha, gamma, eps):
    _, probs, onehot, soft, w = batch
    y = onehot if targets == "onehot" else soft
    loss = FocalLoss(alpha=alpha, gamma=gamma, label_smoothing=eps)
    expected, per = ref_focal(y, probs, alpha, gamma, eps)
    assert float(loss(y, probs)) == pytest.approx(expected, rel=1e-5)
    expected_w, _ = ref_focal(y, probs, alpha, gamma, eps, w=w)
    assert float(loss(y, probs, sample_weight=w)) == pytest.approx(expected_w, rel=1e-5)
    per_sample = FocalLoss(alpha=alpha, gamma=gamma, label_smoothing=eps, reduction="none")(y, probs)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_sample), per, rtol=1e-5)
    assert expected > 0


def test_one_hot_smoothing_values():
    # One-hot row, eps=0.12, C=4: target is 0.88 on the true class, 0.04 elsewhere.
    y = np.array([[0, 0, 1, 0]], np.float32)
    p = np.array([[0.1, 0.2, 0.6, 0.1]], np.float32)
    loss = FocalLoss(alpha=[1.0, 1.5, 2.0, 12.0], gamma=3.5, label_smoothing=0.12)
    ce = -(0.04 * np.log(0.1) + 0.04 * np.log(0.2) + 0.88 * np.log(0.6) + 0.04 * np.log(0.1))
    expected = 2.0 * (1 - 0.6) ** 3.5 * ce
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)


def test_plain_case_equals_keras_crossentropy(batch):
    _, probs, onehot, soft, w = batch
    ours = FocalLoss(alpha=None, gamma=0.0, label_smoothing=0.0)
    cce = keras.losses.CategoricalCrossentropy()
    for y in (onehot, soft):
        assert float(ours(y, probs)) == pytest.approx(float(cce(y, probs)), rel=1e-5)
        assert float(ours(y, probs, sample_weight=w)) == pytest.approx(float(cce(y, probs, sample_weight=w)), rel=1e-5)


def test_from_logits_equivalent(batch):
    logits, probs, onehot, soft, w = batch
    kw = dict(alpha=[1.0, 1.5, 2.0, 12.0], gamma=3.5, label_smoothing=0.12)
    for y in (onehot, soft):
        a = float(FocalLoss(from_logits=True, **kw)(y, logits, sample_weight=w))
        b = float(FocalLoss(from_logits=False, **kw)(y, probs, sample_weight=w))
        assert a == pytest.approx(b, rel=1e-5)


def test_float16_input_computed_in_float32(batch):
    _, probs, onehot, _, _ = batch
    loss = FocalLoss(gamma=2.0, label_smoothing=0.1)
    out = loss(onehot, probs.astype(np.float16))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected, _ = ref_focal(onehot, probs.astype(np.float16).astype(np.float32), None, 2.0, 0.1)
    assert float(out) == pytest.approx(expected, rel=1e-5)


def test_clipping_keeps_loss_finite():
    y = np.array([[1, 0, 0, 0]], np.float32)
    p = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)
    val = float(FocalLoss(gamma=2.0, label_smoothing=0.1)(y, p))
    assert np.isfinite(val)
    expected, _ = ref_focal(y, p, None, 2.0, 0.1)
    assert val == pytest.approx(expected, rel=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError):
        FocalLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="alpha has 3 values"):
        FocalLoss(alpha=[1, 2, 3])(np.eye(4, dtype="float32"), np.full((4, 4), 0.25, "float32"))


def test_config_roundtrip():
    loss = FocalLoss(alpha=[1.0, 1.5, 2.0, 12.0], gamma=3.5, label_smoothing=0.12, from_logits=True, name="f")
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, FocalLoss)
    assert clone.get_config() == loss.get_config()
    assert clone.alpha == [1.0, 1.5, 2.0, 12.0] and clone.gamma == 3.5 and clone.from_logits


def tiny_model():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(C, activation="softmax", dtype="float32")(x)
    return keras.Model(inp, out)


def test_compile_fit_save_reload(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    loss = FocalLoss(alpha=[1.0, 1.5, 2.0, 12.0], gamma=3.5, label_smoothing=0.12)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    rng = np.random.default_rng(0)
    x = rng.random((8, 16, 16, 3), dtype=np.float32)
    y = np.eye(C, dtype=np.float32)[rng.integers(0, C, 8)]
    before = float(model.evaluate(x, y, verbose=0))
    ref, _ = ref_focal(y, model.predict(x, verbose=0), [1.0, 1.5, 2.0, 12.0], 3.5, 0.12)
    assert before == pytest.approx(ref, rel=1e-4)
    hist = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.loss, FocalLoss)
    assert reloaded.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert float(reloaded.evaluate(x, y, verbose=0)) == pytest.approx(float(model.evaluate(x, y, verbose=0)), rel=1e-5)
