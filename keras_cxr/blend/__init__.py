"""Blending: combine several models' class probabilities into one prediction.

Inputs are `probs`, shape `(M, N, C)` (M models' probabilities for the same
N rows and C classes, rows summing to 1), and `y`, `(N,)` class ids. Methods,
simplest first (`BLEND_METHODS`):

* ``mean``: the plain average (`MeanBlend`);
* ``weighted``: one weight per model (`WeightedBlend`);
* ``class-specific``: one weight per model per class column, so a model good
  at COVID-19 can carry that column alone (`ClassSpecificBlend`);
* ``stacking``: logistic regression on all models' log-probabilities
  (`StackingBlend`).

Each can be followed by per-class decision biases (`fit_biases`,
`apply_biases`) that move the argmax toward under-called classes. `Blender`
composes a method and optional biases; `fit_blend` tries candidates and picks
one.

The honesty rule: weights, biases and regressions are fitted on labeled rows
only (validation predictions, or out-of-fold predictions of the training
rows), never on the rows being submitted, and the searches maximise Macro-F1
on those very rows, so their in-sample score flatters them. Each candidate
is therefore also scored by cross-validation over the labeled rows
(`cross_validated_macro_f1`, grouped by patient when groups are given); the
gap between the two shows how much the search overfits, and `fit_blend`
chooses by the cross-validated score, preferring the simpler candidate on a
tie.

Example:

```python
from keras_cxr.blend import fit_blend

result = fit_blend(val_probs, y_val, method="all", groups=patients, model_names=["a", "b"])
test = result.predict_proba(test_probs)       # (N_test, C)
report = result.report()                       # JSON-ready, for blend.json
```
"""

from keras_cxr.blend.biases import apply_biases, fit_biases
from keras_cxr.blend.blender import BLEND_METHODS, Blender, make_method
from keras_cxr.blend.crossval import CVScore, cross_validated_macro_f1
from keras_cxr.blend.methods import ClassSpecificBlend, MeanBlend, StackingBlend, WeightedBlend
from keras_cxr.blend.scoring import macro_f1_score
from keras_cxr.blend.selection import BlendResult, candidate_list, fit_blend

__all__ = [
    "BLEND_METHODS",
    "BlendResult",
    "Blender",
    "CVScore",
    "ClassSpecificBlend",
    "MeanBlend",
    "StackingBlend",
    "WeightedBlend",
    "apply_biases",
    "candidate_list",
    "cross_validated_macro_f1",
    "fit_biases",
    "fit_blend",
    "macro_f1_score",
    "make_method",
]
