"""Class-balanced epoch sampling (the recipe's first imbalance layer).

With ``"balanced"`` every class is drawn equally often in expectation, so on
the Kaggle train set each COVID-19 image appears ~25 times per epoch.
"""

import numpy as np

SAMPLING_MODES = ("balanced", "sqrt", "none")


def _check_ids(class_ids, num_classes=None):
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 1 or not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(f"class_ids must be a 1-D integer array, got {class_ids.dtype} {class_ids.shape}")
    if class_ids.size and class_ids.min() < 0:
        raise ValueError("class_ids must be >= 0")
    if num_classes is not None and class_ids.size and class_ids.max() >= num_classes:
        raise ValueError(f"class id {class_ids.max()} out of range for {num_classes} classes")
    return class_ids


def class_weights_for(class_ids, num_classes, mode):
    """Per-sample drawing weights for each row, from its class's count.

    Args:
        class_ids: `(N,)` integer class of each row.
        num_classes: number of classes.
        mode: ``"balanced"`` (weight N / count(class): every class equally
            likely), ``"sqrt"`` (1 / sqrt(count(class)): halfway in log
            terms), or ``"none"`` (all 1: the natural frequencies).

    Returns:
        `(N,)` float64 weights (not normalised).
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
    class_ids = _check_ids(class_ids, num_classes)
    counts = np.bincount(class_ids, minlength=num_classes).astype(np.float64)
    if mode == "balanced":
        return len(class_ids) / counts[class_ids]
    if mode == "sqrt":
        return 1.0 / np.sqrt(counts[class_ids])
    return np.ones(len(class_ids))


def draw_epoch(class_ids, mode, rng, size=None):
    """Draw one epoch of row indices.

    Args:
        class_ids: `(N,)` integer class of each row.
        mode: ``"balanced"`` or ``"sqrt"`` (drawn with replacement by
            `class_weights_for`), or ``"none"`` (a permutation: each row once).
        rng: a `np.random.Generator`.
        size: number of indices (default N). For ``"none"`` a size above N
            tops the permutation up with rows from a second permutation.

    Returns:
        `(size,)` int64 indices into the rows.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
    class_ids = _check_ids(class_ids)
    n = len(class_ids)
    size = n if size is None else int(size)
    if n == 0:
        raise ValueError("cannot draw an epoch from zero rows")
    if mode == "none":
        order = rng.permutation(n)
        while len(order) < size:
            order = np.concatenate([order, rng.permutation(n)])
        return order[:size].astype(np.int64)
    weights = class_weights_for(class_ids, int(class_ids.max()) + 1, mode)
    return rng.choice(n, size=size, replace=True, p=weights / weights.sum()).astype(np.int64)
