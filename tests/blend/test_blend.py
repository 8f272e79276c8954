import json
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import f1_score

from keras_cxr import CLASS_NAMES
from keras_cxr.blend import BLEND_METHODS
from keras_cxr.blend import Blender
from keras_cxr.blend import ClassSpecificBlend
from keras_cxr.blend import MeanBlend
from keras_cxr.blend import StackingBlend
from keras_cxr.blend import WeightedBlend
from keras_cxr.blend import apply_biases
from keras_cxr.blend import candidate_list
from keras_cxr.blend import cross_validated_macro_f1
from keras_cxr.blend import fit_biases
from keras_cxr.blend import fit_blend
from keras_cxr.blend import macro_f1_score

C = 4
VIRUS, COVID = 2, 3


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(y, p):
    return macro_f1_score(y, p.argmax(axis=1), C)


def planted(n=400, seed=0):
    """Model A is reliable on COVID-19, model B on virus; both mediocre elsewhere.

    A model's column for its "weak" class carries spikes unrelated to the
    label (false alarms on 40% of rows), which an average cannot remove but
    a per-column weight can.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    onehot = np.eye(C)[y]

    def model(strong, weak):
        z = 1.0 * onehot + rng.normal(0, 0.8, (n, C))
        z[:, strong] = 3.0 * onehot[:, strong] + rng.normal(0, 0.3, n)
        z[:, weak] = 2.5 * (rng.random(n) < 0.4) + rng.normal(0, 0.3, n)
        return softmax(z)

    return np.stack([model(COVID, VIRUS), model(VIRUS, COVID)]), y


def noise(n=200, models=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(C), size=(models, n)), rng.integers(0, C, n)


def test_class_specific_learns_planted_per_class_strengths():
    probs, y = planted()
    blend = ClassSpecificBlend().fit(probs, y)
    w = blend.weights_
    assert w.shape == (2, C)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert w[0, COVID] >= 0.7 and w[1, COVID] <= 0.3  # A carries COVID-19
    assert w[1, VIRUS] >= 0.7 and w[0, VIRUS] <= 0.3  # B carries virus

    blended = blend.predict_proba(probs)
    np.testing.assert_allclose(blended.sum(axis=1), 1.0)
    mean = MeanBlend().fit(probs, y).predict_proba(probs)
    assert score(y, blended) > score(y, mean) + 0.1  # about 0.92 vs 0.75
    cv_cs = cross_validated_macro_f1("class-specific", False, probs, y)
    cv_mean = cross_validated_macro_f1("mean", False, probs, y)
    assert cv_cs.macro_f1 > cv_mean.macro_f1 + 0.1  # about 0.90 vs 0.75

    # The weights are what makes the difference: uniform ones give the mean back.
    blend.weights_ = np.full((2, C), 0.5)
    np.testing.assert_allclose(blend.predict_proba(probs), mean)
    assert blend.params(["A", "B"], CLASS_NAMES)["weights"]["COVID-19"] == {"A": 0.5, "B": 0.5}


def test_cross_validation_exposes_overfitting_on_pure_noise():
    probs, y = noise()
    for method, biases in (("class-specific", False), ("weighted", True)):
        blender = Blender(method, biases).fit(probs, y)
        in_sample = score(y, blender.predict_proba(probs))
        cv = cross_validated_macro_f1(method, biases, probs, y, folds=5, seed=0)
        # The search finds patterns in noise (about 0.32 in-sample); held-out rows show chance (about 0.25).
        assert in_sample > cv.macro_f1 + 0.04, (method, in_sample, cv.macro_f1)
        assert cv.macro_f1 < 0.3
        assert len(cv.fold_macro_f1) == cv.folds == 5
        assert (cv.fold >= 0).all() and cv.held_out_proba.shape == (200, C)
        np.testing.assert_allclose(cv.held_out_proba.sum(axis=1), 1.0)


@pytest.mark.slow
def test_fit_blend_all_chooses_best_cross_validated_candidate():
    probs, y = planted(n=240, seed=1)
    result = fit_blend(probs, y, method="all", model_names=["A", "B"], folds=4, seed=3)
    report = result.report()
    json.dumps(report)  # JSON-ready
    names = [m + s for m in BLEND_METHODS for s in ("", "+biases")]
    assert list(report["candidates"]) == names
    cvs = [report["candidates"][n]["cv_macro_f1"] for n in names]
    assert report["chosen"] == result.chosen == names[int(np.argmax(cvs))]  # argmax: first on ties
    assert result.chosen != "mean"
    assert report["labeled_rows"] == 240 and report["models"] == ["A", "B"]
    assert report["cv"] == {"folds": 4, "seed": 3, "grouped": False}
    for i, name in enumerate(["A", "B"]):
        assert report["single_models"][name] == pytest.approx(score(y, probs[i]))
    for name in names:
        entry = report["candidates"][name]
        assert len(entry["cv_fold_macro_f1"]) == 4
        assert entry["in_sample_macro_f1"] == pytest.approx(score(y, result.blenders[name].predict_proba(probs)))
        assert entry["params"]["method"] == name.split("+")[0]
        assert ("biases" in entry["params"]) == name.endswith("+biases")
    assert set(report["candidates"]["class-specific"]["params"]["weights"]) == set(CLASS_NAMES)
    assert report["candidates"]["mean+biases"]["params"]["biases"]["normal"] == 0.0
    np.testing.assert_array_equal(result.predict_proba(probs), result.blenders[result.chosen].predict_proba(probs))

    # Same inputs and seed, same report.
    assert fit_blend(probs, y, method="all", model_names=["A", "B"], folds=4, seed=3).report() == report


def test_fit_blend_single_method_and_candidate_lists():
    assert candidate_list("weighted") == [("weighted", False)]
    assert candidate_list("weighted", biases=True) == [("weighted", True)]
    assert candidate_list("all", biases=False) == [(m, False) for m in BLEND_METHODS]
    assert len(candidate_list("all")) == 8
    probs, y = planted(n=120, seed=2)
    result = fit_blend(probs, y, method="class-specific")
    assert result.chosen == "class-specific"
    assert list(result.report()["candidates"]) == ["class-specific"]
    assert result.report()["models"] == ["model0", "model1"]


def test_biases_fix_an_under_called_class():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, C, n)
    p = softmax(1.5 * np.eye(C)[y] + rng.normal(0, 1, (n, C)))
    p[:, VIRUS] *= 0.15  # the model rarely calls virus
    p /= p.sum(axis=1, keepdims=True)

    b = fit_biases(p, y)
    assert b.shape == (C,) and b[0] == 0.0
    assert b[VIRUS] >= 1.0  # about 1.6 with this seed
    assert np.all(np.abs(b) <= 2.0)
    q = apply_biases(p, b)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    virus_f1 = [f1_score(y, x.argmax(axis=1), labels=[VIRUS], average="macro") for x in (p, q)]
    assert virus_f1[1] > virus_f1[0] + 0.3  # about 0.24 -> 0.67
    assert score(y, q) > score(y, p) + 0.1  # about 0.53 -> 0.67
    np.testing.assert_allclose(apply_biases(p, np.zeros(C)), p, atol=1e-6)

    blender = Blender("mean", biases=True).fit(p[None], y)
    np.testing.assert_allclose(blender.biases_, b)
    np.testing.assert_allclose(blender.predict_proba(p[None]), q)


def test_mean_blend_is_the_arithmetic_mean():
    probs, y = noise(n=50)
    np.testing.assert_allclose(MeanBlend().fit(probs, y).predict_proba(probs), probs.mean(axis=0))
    assert MeanBlend().fit(probs, y).params()["weights"] == pytest.approx([1 / 3] * 3)


def test_weighted_blend_puts_weight_on_the_perfect_model():
    rng = np.random.default_rng(4)
    n = 300
    y = rng.integers(0, C, n)
    perfect = np.full((n, C), 0.2)
    perfect[np.arange(n), y] = 0.4  # right every time, but not confident
    confident_noise = rng.dirichlet(np.full(C, 0.3), n)
    probs = np.stack([perfect, confident_noise])
    blend = WeightedBlend().fit(probs, y)
    assert score(y, probs.mean(axis=0)) < 0.4
    assert blend.weights_[0] >= 0.9
    assert score(y, blend.predict_proba(probs)) == 1.0
    assert blend.params(["perfect", "noise"])["weights"]["perfect"] == pytest.approx(blend.weights_[0])


def test_weighted_search_keeps_uniform_weights_without_evidence():
    # Two identical models: no weight change can raise Macro-F1, so none is made.
    probs, y = noise(n=100, models=1)
    blend = WeightedBlend().fit(np.concatenate([probs, probs]), y)
    np.testing.assert_array_equal(blend.weights_, [0.5, 0.5])


def test_only_stacking_uses_a_model_with_swapped_columns():
    rng = np.random.default_rng(5)
    n = 300
    y = rng.integers(0, C, n)
    informative = softmax(2 * np.eye(C)[y] + rng.normal(0, 0.5, (n, C)))
    swapped = np.roll(informative, 1, axis=1)  # class c's evidence sits in column c + 1
    probs = np.stack([swapped, rng.dirichlet(np.ones(C), n)])
    assert score(y, MeanBlend().fit(probs, y).predict_proba(probs)) < 0.1
    stacking = cross_validated_macro_f1("stacking", False, probs, y)
    assert stacking.macro_f1 > 0.95
    for method in ("mean", "weighted", "class-specific"):
        assert cross_validated_macro_f1(method, False, probs, y).macro_f1 < 0.4


def test_stacking_with_classes_missing_from_y():
    probs, y = planted(n=200, seed=6)
    keep = y < 2
    blend = StackingBlend().fit(probs[:, keep], y[keep])
    p = blend.predict_proba(probs)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(p[:, 2:] == 0)
    params = blend.params(["A", "B"], CLASS_NAMES)
    assert params["classes"] == ["normal", "bacteria"] and len(params["features"]) == 2 * C
    assert params["coef"]["normal"] == pytest.approx([-v for v in params["coef"]["bacteria"]])
    single = StackingBlend().fit(probs[:, :5], np.zeros(5, int)).predict_proba(probs)
    np.testing.assert_array_equal(single.argmax(axis=1), 0)


@pytest.mark.parametrize("method", BLEND_METHODS)
def test_every_method_predicts_probability_rows(method):
    probs, y = planted(n=120, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no ConvergenceWarning from stacking
        blender = clone(Blender(method, biases=True)).fit(probs, y)
    p = blender.predict_proba(probs[:, :17])
    assert p.shape == (17, C) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(p >= 0)
    json.dumps(blender.params(["A", "B"], CLASS_NAMES))


def test_grouped_cross_validation_keeps_patients_together():
    probs, y = planted(n=240, seed=8)
    patients = np.arange(240) // 3  # three rows per patient; give each patient one label
    y = y[patients * 3]
    cv = cross_validated_macro_f1("weighted", False, probs, y, folds=4, groups=patients)
    assert cv.grouped and cv.folds == 4
    for patient in np.unique(patients):
        assert len(set(cv.fold[patients == patient])) == 1
    ungrouped = cross_validated_macro_f1("weighted", False, probs, y, folds=4)
    assert not ungrouped.grouped
    assert any(len(set(ungrouped.fold[patients == p])) > 1 for p in np.unique(patients))
    report = fit_blend(probs, y, method="mean", groups=patients, folds=4).report()
    assert report["cv"]["grouped"] is True


def test_folds_shrink_to_the_smallest_class():
    probs, y = planted(n=100, seed=9)
    y[y == COVID] = 0
    y[:3] = COVID  # three COVID-19 rows
    cv = cross_validated_macro_f1("mean", False, probs, y, folds=5)
    assert cv.folds == 3 and len(cv.fold_macro_f1) == 3
    assert cv.macro_f1 == pytest.approx(score(y, probs.mean(axis=0)))  # the mean has nothing to fit


def test_macro_f1_score_matches_sklearn():
    rng = np.random.default_rng(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for trial in range(30):
            n = int(rng.integers(1, 60))
            classes = 5
            t = rng.integers(0, 4, n)  # class 4 never occurs in either
            p = rng.integers(0, 3 if trial % 2 else 4, n)
            assert macro_f1_score(t, p, classes) == pytest.approx(f1_score(t, p, average="macro"), abs=1e-12)
    assert macro_f1_score([0, 1, 1], [0, 1, 0], 4) == pytest.approx(2 / 3)
    assert macro_f1_score([], [], 4) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        macro_f1_score([0, 4], [0, 1], 4)


def test_input_validation():
    probs, y = planted(n=40, seed=11)
    with pytest.raises(ValueError, match=r"shape \(models, rows, classes\)"):
        MeanBlend().fit(probs[0], y)
    bad = probs.copy()
    bad[1, 5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN.*model 1 row 5 class 2"):
        WeightedBlend().fit(bad, y)
    with pytest.raises(ValueError, match="sum to 1.*logits"):
        MeanBlend().fit(probs * 0.5, y)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        MeanBlend().fit(-probs, y)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        MeanBlend().fit(probs, np.where(y == 0, 4, y))
    with pytest.raises(ValueError, match="39 labels but probs has 40 rows"):
        MeanBlend().fit(probs, y[:-1])
    with pytest.raises(ValueError, match="integer class ids"):
        MeanBlend().fit(probs, y + 0.5)
    with pytest.raises(ValueError, match="unknown blend method 'median'.*mean, weighted, class-specific, stacking"):
        fit_blend(probs, y, method="median")
    with pytest.raises(ValueError, match="unknown blend method"):
        Blender("median").fit(probs, y)
    with pytest.raises(ValueError, match="biases must be"):
        fit_blend(probs, y, biases="yes")
    with pytest.raises(ValueError, match="fitted on 2 model"):
        MeanBlend().fit(probs, y).predict_proba(probs[:1])
    with pytest.raises(ValueError, match=r"got 3 model name\(s\) for 2 model"):
        fit_blend(probs, y, model_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct"):
        fit_blend(probs, y, model_names=["a", "a"])
    with pytest.raises(ValueError, match="one entry per row"):
        fit_blend(probs, y, groups=np.arange(10))
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] have a single labeled row"):
        cross_validated_macro_f1("mean", False, probs, np.r_[np.zeros(39, int), 3])
    with pytest.raises(ValueError, match="folds must be"):
        cross_validated_macro_f1("mean", False, probs, y, folds=1)
    with pytest.raises(ValueError, match="biases must have shape"):
        apply_biases(probs[0], [0.0, 1.0])
