"""Input checks shared by the blending code; every message says what to fix."""

import numpy as np

# Rows must sum to 1 within this (as in keras_cxr.probabilities).
ROW_SUM_TOLERANCE = 1e-3


def check_probs(probs, name="probs", ndim=3):
    """`probs` as float64, shape `(M, N, C)` (or `(N, C)` when `ndim=2`)."""
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} is not a numeric array: {e}") from None
    shape = "(models, rows, classes)" if ndim == 3 else "(rows, classes)"
    if p.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape}, got shape {p.shape}")
    if p.shape[-1] < 2 or p.shape[-2] < 1 or (ndim == 3 and p.shape[0] < 1):
        raise ValueError(f"{name} needs 1+ model(s), 1+ row(s) and 2+ classes, got shape {p.shape}")
    stacked = p if ndim == 3 else p[None]

    def where(mask):
        m, n, c = np.argwhere(mask)[0]
        return (f"model {m} " if ndim == 3 else "") + f"row {n} class {c}"

    bad = ~np.isfinite(stacked)
    if bad.any():
        raise ValueError(f"{name} holds NaN or inf ({int(bad.sum())} value(s); first at {where(bad)})")
    bad = (stacked < 0) | (stacked > 1 + ROW_SUM_TOLERANCE)
    if bad.any():
        raise ValueError(f"{name} holds values outside [0, 1] (first at {where(bad)})")
    sums = stacked.sum(axis=-1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        m, n = np.argwhere(off)[0]
        raise ValueError(
            f"{name} rows must sum to 1: {'model %d ' % m if ndim == 3 else ''}row {n} sums to {sums[m, n]:.6g}"
            f" ({int(off.sum())} row(s) like this; are these logits?)"
        )
    return p


def check_labels(y, num_rows, num_classes):
    """`y` as int64 class ids `(N,)`, each in `[0, num_classes)`."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array of class ids, got shape {y.shape}")
    if y.shape[0] != num_rows:
        raise ValueError(f"y has {y.shape[0]} labels but probs has {num_rows} rows")
    if y.dtype.kind not in "iu":
        if y.dtype.kind != "f" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"y must hold integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        raise ValueError(
            f"y holds class ids outside [0, {num_classes}): {sorted(set(y[outside].tolist()))[:5]}"
            f" (probs has {num_classes} class columns)"
        )
    return y


def check_groups(groups, num_rows):
    """`groups` as an `(N,)` array (one group id, e.g. a patient, per row)."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != num_rows:
        raise ValueError(f"groups must have one entry per row ({num_rows}), got shape {groups.shape}")
    return groups


def check_names(names, count, what, default_prefix):
    """`count` distinct names (strings); `None` gives `prefix0, prefix1, ...`."""
    if names is None:
        return tuple(f"{default_prefix}{i}" for i in range(count))
    names = tuple(str(n) for n in names)
    if len(names) != count:
        raise ValueError(f"got {len(names)} {what} name(s) for {count} {what}(s): {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be distinct: {list(names)}")
    return names
