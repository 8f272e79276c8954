"""Cross-validated Macro-F1 of a blend: how well the fitted weights generalise."""

import dataclasses

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from keras_cxr.blend._arrays import check_groups, check_labels, check_probs
from keras_cxr.blend.blender import Blender, make_method
from keras_cxr.blend.scoring import macro_f1_score


@dataclasses.dataclass(frozen=True, eq=False)
class CVScore:
    """The result of `cross_validated_macro_f1`.

    Args:
        macro_f1: Macro-F1 of all held-out predictions pooled.
        fold_macro_f1: Macro-F1 of each held-out part.
        folds: the number of parts used (after any reduction).
        grouped: whether rows were split by group.
        held_out_proba: `(N, C)` prediction of every row by the blend fitted
            without its part.
        fold: `(N,)` index of the part each row was held out in.
    """

    macro_f1: float
    fold_macro_f1: tuple[float, ...]
    folds: int
    grouped: bool
    held_out_proba: np.ndarray
    fold: np.ndarray


def split_rows(y, folds=5, seed=0, groups=None):
    """Stratified (and, with `groups`, grouped) folds over labeled rows.

    `folds` drops to the smallest class count, and to the number of groups,
    when those are smaller.

    Returns:
        `(k, [(train_index, test_index), ...])`.

    Raises:
        ValueError: `folds < 2`, a class with a single row, or fewer than two
            groups.
    """
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds}")
    counts = np.bincount(y)
    lonely = np.flatnonzero(counts == 1)
    if lonely.size:
        raise ValueError(
            f"class(es) {lonely.tolist()} have a single labeled row; cross-validation needs 2+ rows per class"
            " (add labeled rows or drop the class)"
        )
    k = int(min(folds, counts[counts > 0].min()))
    rows = np.zeros(len(y))
    if groups is None:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        return k, list(splitter.split(rows, y))
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"grouped cross-validation needs 2+ groups, got {n_groups}")
    k = min(k, n_groups)
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    return k, list(splitter.split(rows, y, groups))


def _cross_validate(method, biases, probs, y, k, splits, grouped):
    held_out = np.zeros(probs.shape[1:])
    fold = np.full(probs.shape[1], -1)
    scores = []
    for i, (train, test) in enumerate(splits):
        if not len(test):
            continue
        blender = Blender(method, biases).fit(probs[:, train], y[train])
        held_out[test] = blender.predict_proba(probs[:, test])
        fold[test] = i
        scores.append(macro_f1_score(y[test], held_out[test].argmax(axis=1), probs.shape[2]))
    pooled = macro_f1_score(y, held_out.argmax(axis=1), probs.shape[2])
    return CVScore(pooled, tuple(scores), k, grouped, held_out, fold)


def cross_validated_macro_f1(method, biases, probs, y, folds=5, seed=0, groups=None):
    """Macro-F1 of a `Blender` on rows it was not fitted on.

    Rows are split by `StratifiedKFold(folds, shuffle=True, random_state=seed)`,
    or `StratifiedGroupKFold` when `groups` (e.g. patient ids) is given, so a
    group never sits in both the fitting and the held-out part. A fresh
    `Blender(method, biases)` is fitted on each k-1 parts and predicts the
    remaining one; the score pools every held-out prediction. Compared with
    the in-sample score it shows how much the weight search overfits.

    Args:
        method: one of `BLEND_METHODS`.
        biases: whether to fit per-class biases.
        probs: `(M, N, C)` probabilities of the labeled rows.
        y: `(N,)` class ids.
        folds: number of parts (reduced to the smallest class count or the
            number of groups when smaller).
        seed: shuffling seed.
        groups: optional `(N,)` group id per row.

    Returns:
        A `CVScore`.

    Example:

    ```python
    cv = cross_validated_macro_f1("class-specific", False, val_probs, y_val, groups=patient_ids)
    cv.macro_f1, cv.fold_macro_f1
    ```
    """
    make_method(method)  # an unknown name fails before any work
    probs = check_probs(probs)
    y = check_labels(y, probs.shape[1], probs.shape[2])
    if groups is not None:
        groups = check_groups(groups, probs.shape[1])
    k, splits = split_rows(y, folds, seed, groups)
    return _cross_validate(method, bool(biases), probs, y, k, splits, groups is not None)
