"""`fit_blend`: fit candidate blends, estimate each by cross-validation, pick one."""

import copy
import dataclasses

from keras_cxr.constants import CLASS_NAMES
from keras_cxr.blend._arrays import check_groups, check_labels, check_names, check_probs
from keras_cxr.blend.blender import BLEND_METHODS, Blender
from keras_cxr.blend.crossval import _cross_validate, split_rows
from keras_cxr.blend.scoring import macro_f1_score


def candidate_list(method="class-specific", biases=None):
    """`(method, biases)` pairs to try, simplest first.

    `method="all"` tries every method in `BLEND_METHODS`; `biases=None` tries
    each without and with biases for `"all"`, and means `False` for a single
    method. Order: mean, mean+biases, weighted, weighted+biases, ...
    """
    if biases not in (None, True, False):
        raise ValueError(f"biases must be None, True or False, got {biases!r}")
    if method == "all":
        settings = (False, True) if biases is None else (biases,)
        return [(m, b) for m in BLEND_METHODS for b in settings]
    if method not in BLEND_METHODS:
        raise ValueError(f"unknown blend method {method!r}; choose one of all, {', '.join(BLEND_METHODS)}")
    return [(method, bool(biases))]


@dataclasses.dataclass(frozen=True, eq=False)
class BlendResult:
    """The outcome of `fit_blend`.

    Args:
        chosen: name of the chosen candidate, e.g. `"class-specific+biases"`.
        blender: the chosen `Blender`, fitted on all labeled rows.
        blenders: every candidate's `Blender` fitted on all labeled rows.
        candidates: per candidate, `in_sample_macro_f1`, `cv_macro_f1`,
            `cv_fold_macro_f1` and `params`.
        single_models: in-sample Macro-F1 of each model alone.
        model_names: the `M` model names.
        class_names: the `C` class names.
        labeled_rows: `N`.
        cv: `{"folds", "seed", "grouped"}` of the cross-validation.
    """

    chosen: str
    blender: Blender
    blenders: dict
    candidates: dict
    single_models: dict
    model_names: tuple
    class_names: tuple
    labeled_rows: int
    cv: dict

    def predict_proba(self, probs):
        """The chosen blend of `(M, N', C)` probabilities, `(N', C)`."""
        return self.blender.predict_proba(probs)

    def report(self):
        """A JSON-ready summary (a fresh dict each call)."""
        return {
            "chosen": self.chosen,
            "labeled_rows": self.labeled_rows,
            "models": list(self.model_names),
            "class_names": list(self.class_names),
            "single_models": dict(self.single_models),
            "candidates": copy.deepcopy(self.candidates),
            "cv": dict(self.cv),
        }


def fit_blend(
    probs,
    y,
    method="class-specific",
    biases=None,
    folds=5,
    seed=0,
    groups=None,
    model_names=None,
    class_names=None,
):
    """Fit blend candidates on labeled rows and choose by cross-validation.

    Every candidate (see `candidate_list`) is fitted on all labeled rows
    (its in-sample Macro-F1 scores those same rows, so it is optimistic) and
    cross-validated on shared folds (see `cross_validated_macro_f1`). The
    candidate with the highest cross-validated Macro-F1 is chosen; ties go to
    the earlier, simpler one.

    Args:
        probs: `(M, N, C)` probabilities of labeled rows (validation or
            out-of-fold predictions; never the rows being predicted).
        y: `(N,)` class ids.
        method: `"all"` or one of `BLEND_METHODS`.
        biases: `None`, `True` or `False` (see `candidate_list`).
        folds: cross-validation parts (reduced when a class is smaller).
        seed: cross-validation shuffling seed.
        groups: optional `(N,)` group (patient) ids for grouped folds.
        model_names: `M` names for the report (default `model0, ...`).
        class_names: `C` names for the report (default `CLASS_NAMES` when
            `C == 4`, else `class0, ...`).

    Returns:
        A `BlendResult`.

    Example:

    ```python
    result = fit_blend(np.stack([val_a, val_b]), y_val, method="all", model_names=["a", "b"])
    result.chosen                                  # e.g. "class-specific"
    test = result.predict_proba(np.stack([test_a, test_b]))
    json.dump(result.report(), f)
    ```
    """
    candidates = candidate_list(method, biases)
    probs = check_probs(probs)
    num_models, num_rows, num_classes = probs.shape
    y = check_labels(y, num_rows, num_classes)
    if groups is not None:
        groups = check_groups(groups, num_rows)
    model_names = check_names(model_names, num_models, "model", "model")
    if class_names is None and num_classes == len(CLASS_NAMES):
        class_names = CLASS_NAMES
    class_names = check_names(class_names, num_classes, "class", "class")
    k, splits = split_rows(y, folds, seed, groups)

    blenders, scores = {}, {}
    for m, b in candidates:
        blender = Blender(m, b).fit(probs, y)
        cv = _cross_validate(m, b, probs, y, k, splits, groups is not None)
        blenders[blender.name] = blender
        scores[blender.name] = {
            "in_sample_macro_f1": macro_f1_score(y, blender.predict_proba(probs).argmax(axis=1), num_classes),
            "cv_macro_f1": cv.macro_f1,
            "cv_fold_macro_f1": list(cv.fold_macro_f1),
            "params": blender.params(model_names, class_names),
        }
    chosen = None
    for name, s in scores.items():  # in candidate order: strict > keeps the simpler on ties
        if chosen is None or s["cv_macro_f1"] > scores[chosen]["cv_macro_f1"]:
            chosen = name
    single = {n: macro_f1_score(y, probs[i].argmax(axis=1), num_classes) for i, n in enumerate(model_names)}
    return BlendResult(
        chosen=chosen,
        blender=blenders[chosen],
        blenders=blenders,
        candidates=scores,
        single_models=single,
        model_names=model_names,
        class_names=class_names,
        labeled_rows=int(num_rows),
        cv={"folds": k, "seed": seed, "grouped": groups is not None},
    )
