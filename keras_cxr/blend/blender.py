"""`Blender`: a blending method, optionally followed by per-class biases."""

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from keras_cxr.blend.biases import apply_biases, fit_biases
from keras_cxr.blend.methods import ClassSpecificBlend, MeanBlend, StackingBlend, WeightedBlend

# In order of complexity; `fit_blend` breaks ties toward the earlier one.
BLEND_METHODS = ("mean", "weighted", "class-specific", "stacking")
_ESTIMATORS = dict(zip(BLEND_METHODS, (MeanBlend, WeightedBlend, ClassSpecificBlend, StackingBlend)))


def make_method(method):
    """A fresh estimator for a method name from `BLEND_METHODS`."""
    if method not in _ESTIMATORS:
        raise ValueError(f"unknown blend method {method!r}; choose one of {', '.join(BLEND_METHODS)}")
    return _ESTIMATORS[method]()


class Blender(BaseEstimator):
    """A blending method and, optionally, per-class biases fitted after it.

    With `biases=True`, `fit` first fits the method, then `fit_biases` on the
    method's predictions for the same rows; `predict_proba` applies both.

    Args:
        method: one of `BLEND_METHODS`.
        biases: whether to fit per-class decision biases.

    Example:

    ```python
    blender = Blender("class-specific", biases=True).fit(val_probs, y_val)
    test = blender.predict_proba(test_probs)      # (N_test, C), rows sum to 1
    blender.params(["a", "b"], CLASS_NAMES)        # JSON-ready weights and biases
    ```
    """

    def __init__(self, method="class-specific", biases=False):
        self.method = method
        self.biases = biases

    @property
    def name(self):
        """The candidate name, e.g. `"class-specific+biases"`."""
        return self.method + ("+biases" if self.biases else "")

    def fit(self, probs, y):
        self.estimator_ = make_method(self.method).fit(probs, y)
        self.biases_ = fit_biases(self.estimator_.predict_proba(probs), y) if self.biases else None
        return self

    def predict_proba(self, probs):
        check_is_fitted(self, "estimator_")
        p = self.estimator_.predict_proba(probs)
        return p if self.biases_ is None else apply_biases(p, self.biases_)

    def params(self, model_names=None, class_names=None):
        """What was fitted, JSON-ready; keyed by the names when given."""
        check_is_fitted(self, "estimator_")
        out = {"method": self.method, **self.estimator_.params(model_names, class_names)}
        if self.biases_ is not None:
            b = [float(v) for v in np.round(self.biases_, 10)]
            out["biases"] = b if class_names is None else dict(zip(class_names, b))
        return out
