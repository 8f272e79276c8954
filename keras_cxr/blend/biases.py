"""Per-class decision biases: shift the argmax toward under-called classes.

A model trained on imbalanced data (or blended from such models) can be
right about the ranking yet under-call a class. A bias `b[c]` added to
`log p[:, c]` before the argmax moves the decision boundary; the biases are
chosen to maximise Macro-F1 on labeled rows.
"""

import numpy as np

from keras_cxr.blend._arrays import check_labels, check_probs
from keras_cxr.blend._search import coordinate_ascent, grid
from keras_cxr.blend.methods import EPS
from keras_cxr.blend.scoring import macro_f1_score


def fit_biases(p, y, limit=2.0, step=0.1, max_passes=10):
    """Biases `b (C,)` maximising the Macro-F1 of `argmax(log p + b)`.

    Coordinate ascent over the grid `-limit, ..., limit` (step `step`),
    starting at 0 and moving a bias only on a strictly higher Macro-F1.
    `b[0]` stays 0: adding a constant to every bias changes nothing.

    Args:
        p: `(N, C)` probabilities of labeled rows.
        y: `(N,)` class ids.
        limit: largest absolute bias.
        step: grid step.
        max_passes: most passes over the classes.

    Returns:
        `np.ndarray` of shape `(C,)`, float64.

    Example:

    ```python
    b = fit_biases(val_probs, y_val)        # e.g. [0.0, -0.1, 0.4, 0.0]
    test = apply_biases(test_probs, b)
    ```
    """
    p = check_probs(p, name="p", ndim=2)
    y = check_labels(y, p.shape[0], p.shape[1])
    num_classes = p.shape[1]
    log_p = np.log(np.clip(p, EPS, 1.0))

    def score(b):
        return macro_f1_score(y, (log_p + b).argmax(axis=1), num_classes)

    b, _ = coordinate_ascent(
        np.zeros(num_classes), grid(-limit, limit, step), score, fixed=[(0,)], max_passes=max_passes
    )
    return b


def apply_biases(p, b):
    """`softmax(log(clip(p)) + b)`: rows sum to 1 and their argmax obeys `b`.

    Args:
        p: `(N, C)` probabilities.
        b: `(C,)` biases from `fit_biases`.

    Returns:
        `(N, C)` float64 probabilities.
    """
    p = check_probs(p, name="p", ndim=2)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (p.shape[1],):
        raise ValueError(f"biases must have shape ({p.shape[1]},), got {b.shape}")
    z = np.log(np.clip(p, EPS, 1.0)) + b
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
