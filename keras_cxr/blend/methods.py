"""Blending methods: estimators that combine M models' class probabilities.

Every estimator follows scikit-learn's conventions (hyperparameters in
`__init__`, fitted attributes ending in `_`, `fit` returns `self`) with
`probs` of shape `(M, N, C)` in place of `X`:

* `fit(probs, y)` learns from labeled rows (`y`: `(N,)` class ids);
* `predict_proba(probs)` returns `(N, C)` float64 rows summing to 1;
* `params(model_names=None, class_names=None)` returns what was fitted as a
  JSON-ready dict (lists, or dicts keyed by the names when given).

The weight searches maximise the Macro-F1 of the argmax on the fitting rows,
so their in-sample score is optimistic; `cross_validated_macro_f1` measures
by how much.
"""

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from keras_cxr.blend._arrays import check_labels, check_probs
from keras_cxr.blend._search import coordinate_ascent, grid
from keras_cxr.blend.scoring import macro_f1_score

# Probabilities are clipped to [EPS, 1] before taking logs.
EPS = 1e-7


def normalise_rows(p):
    """Rows scaled to sum 1 (a row of zeros becomes uniform)."""
    sums = p.sum(axis=1, keepdims=True)
    return np.divide(p, sums, out=np.full_like(p, 1.0 / p.shape[1]), where=sums > 0)


def _named(values, names):
    values = [float(v) for v in np.round(values, 12)]  # 0.375, not 0.37499999999999994
    return values if names is None else dict(zip(names, values))


class _Blend(BaseEstimator):
    def _check_fit(self, probs, y):
        probs = check_probs(probs)
        y = check_labels(y, probs.shape[1], probs.shape[2])
        self.n_models_, _, self.n_classes_ = probs.shape
        return probs, y

    def _check_predict(self, probs):
        check_is_fitted(self, "n_models_")
        probs = check_probs(probs)
        expected = (self.n_models_, self.n_classes_)
        if (probs.shape[0], probs.shape[2]) != expected:
            raise ValueError(
                f"{type(self).__name__} was fitted on {expected[0]} model(s) x {expected[1]} classes,"
                f" got probs of shape {probs.shape}"
            )
        return probs


class MeanBlend(_Blend):
    """The plain average of the models' probabilities.

    Example:

    ```python
    blended = MeanBlend().fit(probs, y).predict_proba(probs)  # == probs.mean(axis=0)
    ```
    """

    def fit(self, probs, y):
        self._check_fit(probs, y)
        return self

    def predict_proba(self, probs):
        return normalise_rows(self._check_predict(probs).mean(axis=0))

    def params(self, model_names=None, class_names=None):
        check_is_fitted(self, "n_models_")
        return {"weights": _named(np.full(self.n_models_, 1.0 / self.n_models_), model_names)}


class _GridWeightBlend(_Blend):
    """Weights on a grid, found by coordinate ascent on the fitting rows' Macro-F1.

    Raw weights take grid values `0, step, ..., 1`, start at 1 (the plain
    average) and move one at a time, only on a strictly higher Macro-F1 of
    the argmax. Subclasses set the weights' shape and how they combine.
    """

    def __init__(self, step=0.1, max_passes=10):
        self.step = step
        self.max_passes = max_passes

    def _initial(self):
        raise NotImplementedError

    @staticmethod
    def _normalised(raw):
        """The weights used for `raw`, or None when `raw` is not allowed."""
        raise NotImplementedError

    @staticmethod
    def _combine(weights, probs):
        raise NotImplementedError

    def fit(self, probs, y):
        probs, y = self._check_fit(probs, y)

        def score(raw):
            weights = self._normalised(raw)
            if weights is None:
                return -np.inf
            return macro_f1_score(y, self._combine(weights, probs).argmax(axis=1), self.n_classes_)

        raw, self.search_macro_f1_ = coordinate_ascent(
            self._initial(), grid(0.0, 1.0, self.step), score, max_passes=self.max_passes
        )
        self.weights_ = self._normalised(raw)
        return self

    def predict_proba(self, probs):
        probs = self._check_predict(probs)
        return normalise_rows(self._combine(self.weights_, probs))


class WeightedBlend(_GridWeightBlend):
    """One non-negative weight per model, chosen to maximise Macro-F1.

    The search is `_GridWeightBlend`'s; the weights used (`weights_`) are
    the raw ones normalised to sum 1.

    Args:
        step: grid step of the raw weights.
        max_passes: most coordinate-ascent passes over the models.

    Example:

    ```python
    blend = WeightedBlend().fit(val_probs, y_val)
    blend.weights_                 # e.g. array([0.588, 0.412])
    test = blend.predict_proba(test_probs)
    ```
    """

    def _initial(self):
        return np.ones(self.n_models_)

    @staticmethod
    def _normalised(raw):
        total = raw.sum()
        return raw / total if total > 0 else None

    @staticmethod
    def _combine(weights, probs):
        return np.tensordot(weights, probs, axes=1)

    def params(self, model_names=None, class_names=None):
        check_is_fitted(self, "weights_")
        return {"weights": _named(self.weights_, model_names)}


class ClassSpecificBlend(_GridWeightBlend):
    """One weight per model per class column, chosen to maximise Macro-F1.

    `blended[:, c] = sum_m W[m, c] * probs[m, :, c]`, each column's weights
    summing to 1, then rows renormalised to sum 1. A model that is reliable
    on one class can so carry that column (e.g. COVID-19: 0.7 model A,
    0.3 model B) without dominating the others. The search is
    `_GridWeightBlend`'s over the `M x C` raw weights; a column whose raw
    weights are all 0 is not allowed.

    Args:
        step: grid step of the raw weights.
        max_passes: most coordinate-ascent passes over the weights.

    Example:

    ```python
    blend = ClassSpecificBlend().fit(val_probs, y_val)
    blend.weights_[:, 3]           # the models' shares of the COVID-19 column
    ```
    """

    def _initial(self):
        return np.ones((self.n_models_, self.n_classes_))

    @staticmethod
    def _normalised(raw):
        totals = raw.sum(axis=0)
        return raw / totals if (totals > 0).all() else None

    @staticmethod
    def _combine(weights, probs):
        return np.einsum("mc,mnc->nc", weights, probs)

    def params(self, model_names=None, class_names=None):
        check_is_fitted(self, "weights_")
        columns = [_named(self.weights_[:, c], model_names) for c in range(self.n_classes_)]
        return {"weights": columns if class_names is None else dict(zip(class_names, columns))}


class StackingBlend(_Blend):
    """Multinomial logistic regression on every model's log-probabilities.

    The features of a row are `log(clip(p, EPS, 1))` of all models'
    columns, model-major (`M * C` of them), so the regression can use any
    model's column as evidence for any class, which weighting cannot (a
    model whose columns are swapped is useless to a weighted average but
    not to stacking). Classes absent from `y` get probability 0.

    Args:
        C: inverse L2 regularisation strength, as in `LogisticRegression`.
        max_iter: most L-BFGS iterations.
        random_state: seed passed to `LogisticRegression`.

    Example:

    ```python
    blend = StackingBlend(C=1.0).fit(val_probs, y_val)
    test = blend.predict_proba(test_probs)
    ```
    """

    def __init__(self, C=1.0, max_iter=2000, random_state=0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    @staticmethod
    def _features(probs):
        m, n, c = probs.shape
        return np.log(np.clip(probs, EPS, 1.0)).transpose(1, 0, 2).reshape(n, m * c)

    def fit(self, probs, y):
        probs, y = self._check_fit(probs, y)
        self.classes_ = np.unique(y)
        if len(self.classes_) == 1:  # LogisticRegression needs two classes
            self.model_ = None
        else:
            self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
            self.model_.fit(self._features(probs), y)
        return self

    def predict_proba(self, probs):
        probs = self._check_predict(probs)
        out = np.zeros((probs.shape[1], self.n_classes_))
        if self.model_ is None:
            out[:, self.classes_[0]] = 1.0
        else:
            out[:, self.classes_] = self.model_.predict_proba(self._features(probs))
        return out

    def params(self, model_names=None, class_names=None):
        check_is_fitted(self, "classes_")
        models = model_names or [f"model{m}" for m in range(self.n_models_)]
        classes = class_names or [f"class{c}" for c in range(self.n_classes_)]
        out = {
            "C": float(self.C),
            "classes": [classes[c] for c in self.classes_],
            "features": [f"log p({m}, {c})" for m in models for c in classes],
        }
        if self.model_ is not None:
            coef, intercept = self.model_.coef_, self.model_.intercept_
            if len(self.classes_) == 2:  # sklearn keeps one row for two classes
                coef = np.vstack([-coef, coef]) / 2
                intercept = np.array([-intercept[0], intercept[0]]) / 2
            out["coef"] = {classes[c]: [float(v) for v in row] for c, row in zip(self.classes_, coef)}
            out["intercept"] = {classes[c]: float(v) for c, v in zip(self.classes_, intercept)}
        return out
