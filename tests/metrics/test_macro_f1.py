import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from keras_cxr.metrics import MacroF1  # noqa: E402
from keras_cxr.metrics import confusion_matrix  # noqa: E402
from keras_cxr.metrics import macro_f1  # noqa: E402
from keras_cxr.metrics import per_class_f1  # noqa: E402

C = 4


def sk_macro(t, p, w=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division warnings are expected
        return f1_score(t, p, average="macro", sample_weight=w)


def probs_for(ids, rng):
    """Random probability rows whose argmax is `ids`."""
    p = rng.random((len(ids), C)).astype(np.float32)
    p[np.arange(len(ids)), ids] += 1.0
    return p / p.sum(axis=1, keepdims=True)


def stream(metric, t, p, rng, y_true=None, w=None, batch=7):
    y_true = np.eye(C, dtype=np.float32)[t] if y_true is None else y_true
    probs = probs_for(p, rng)
    for s in range(0, len(t), batch):
        sw = None if w is None else w[s : s + batch]
        metric.update_state(y_true[s : s + batch], probs[s : s + batch], sample_weight=sw)
    return float(keras.ops.convert_to_numpy(metric.result()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, C, 50)
    p = np.where(rng.random(50) < 0.6, t, rng.integers(0, C, 50))
    m = MacroF1(C)
    got = stream(m, t, p, rng)
    assert got == sk_macro(t, p)  # exact, as both compute 2TP/(2TP+FP+FN) in float64
    assert 0.0 < got < 1.0
    # The numpy helper agrees too, from ids and from one-hot/probability rows.
    assert macro_f1(t, p, C) == sk_macro(t, p)
    assert macro_f1(np.eye(C)[t], probs_for(p, rng), C) == sk_macro(t, p)


def test_class_absent_from_both_is_not_averaged():
    rng = np.random.default_rng(3)
    # Class 3 (COVID-19) appears neither in y_true nor in y_pred.
    t = rng.integers(0, 3, 40)
    p = np.where(rng.random(40) < 0.7, t, rng.integers(0, 3, 40))
    expected = sk_macro(t, p)
    # sklearn averages over 3 labels here, not 4.
    f1_3 = f1_score(t, p, labels=[0, 1, 2], average=None)
    assert expected == pytest.approx(f1_3.mean(), abs=1e-15)
    assert expected != pytest.approx(f1_3.sum() / 4)
    assert stream(MacroF1(C), t, p, rng) == expected
    assert macro_f1(t, p, C) == expected


def test_class_only_predicted_counts_as_zero():
    t = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 3, 1, 1, 2, 0])  # class 3 predicted once, never true
    expected = sk_macro(t, p)
    assert per_class_f1(t, p, C)[3] == 0.0
    assert macro_f1(t, p, C) == expected
    assert stream(MacroF1(C), t, p, np.random.default_rng(0)) == pytest.approx(expected, abs=1e-15)
    # class 0: TP1 FP1 FN1 -> 0.5; class 1: 1.0; class 2: TP1 FN1 -> 2/3; class 3: 0.
    assert expected == pytest.approx(np.mean([0.5, 1.0, 2 / 3, 0.0]), abs=1e-15)


def test_soft_and_sparse_labels():
    rng = np.random.default_rng(4)
    t = rng.integers(0, C, 30)
    p = np.where(rng.random(30) < 0.5, t, rng.integers(0, C, 30))
    other = rng.integers(0, C, 30)
    lam = rng.uniform(0.55, 0.95, size=(30, 1))
    soft = (lam * np.eye(C)[t] + (1 - lam) * np.eye(C)[other]).astype(np.float32)
    assert stream(MacroF1(C), t, p, rng, y_true=soft) == sk_macro(t, p)
    sparse = t.reshape(-1, 1).astype(np.float32)
    assert stream(MacroF1(C), t, p, rng, y_true=sparse) == sk_macro(t, p)


def test_sample_weight_is_a_count_weight():
    rng = np.random.default_rng(5)
    t = rng.integers(0, C, 40)
    p = np.where(rng.random(40) < 0.6, t, rng.integers(0, C, 40))
    w = rng.uniform(0.0, 2.0, 40)
    w[:3] = 0.0
    expected = sk_macro(t, p, w)
    assert expected != pytest.approx(sk_macro(t, p))
    assert stream(MacroF1(C), t, p, rng, w=w.astype(np.float32)) == pytest.approx(expected, rel=1e-6)
    assert macro_f1(t, p, C, sample_weight=w) == pytest.approx(expected, abs=1e-14)


def test_reset_and_confusion_matrix():
    rng = np.random.default_rng(6)
    t = rng.integers(0, C, 20)
    p = rng.integers(0, C, 20)
    m = MacroF1(C)
    stream(m, t, p, rng)
    m.reset_state()
    t2 = np.array([0, 1, 2, 3])
    assert stream(m, t2, t2, rng) == 1.0
    cm = confusion_matrix(t, p, C)
    from sklearn.metrics import confusion_matrix as sk_cm

    np.testing.assert_array_equal(cm, sk_cm(t, p, labels=range(C)))
    assert per_class_f1(t, p, C) == pytest.approx(f1_score(t, p, labels=range(C), average=None, zero_division=0))


def test_metric_in_compile_fit_and_reload(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(C, activation="softmax", dtype="float32")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[MacroF1(C)])
    rng = np.random.default_rng(0)
    xs = rng.random((24, 16, 16, 3), dtype=np.float32)
    ys = np.eye(C, dtype=np.float32)[rng.integers(0, C, 24)]
    model.fit(xs, ys, batch_size=8, epochs=1, verbose=0)
    res = model.evaluate(xs, ys, batch_size=8, verbose=0, return_dict=True)
    pred = model.predict(xs, verbose=0).argmax(1)
    assert res["macro_f1"] == pytest.approx(sk_macro(ys.argmax(1), pred), abs=1e-7)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    res2 = reloaded.evaluate(xs, ys, batch_size=8, verbose=0, return_dict=True)
    assert res2["macro_f1"] == pytest.approx(res["macro_f1"], abs=1e-7)
    restored = [m for m in _walk_metrics(reloaded.metrics) if isinstance(m, MacroF1)]
    assert restored and restored[0].num_classes == C


def _walk_metrics(metrics):
    for m in metrics:
        yield m
        yield from _walk_metrics(getattr(m, "metrics", []) or [])


def test_config_roundtrip():
    m = MacroF1(num_classes=4, name="mf1")
    clone = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert isinstance(clone, MacroF1) and clone.num_classes == 4 and clone.name == "mf1"
