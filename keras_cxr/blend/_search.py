"""Deterministic coordinate ascent on a grid, shared by the weight and bias searches."""

import numpy as np

# A move must beat the current score by more than float noise: two different
# confusion matrices with the same true Macro-F1 can differ in the last bit.
_MIN_GAIN = 1e-12


def grid(start, stop, step):
    """`start, start + step, ..., stop`, rounded so that 0.3 prints as 0.3."""
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    count = int(round((stop - start) / step))
    return np.round(start + step * np.arange(count + 1), 10)


def coordinate_ascent(start, values, score, fixed=(), max_passes=10):
    """Maximise `score(x)` one coordinate at a time over grid `values`.

    Each pass visits every coordinate (in `np.ndindex` order, skipping
    `fixed`), tries every grid value there with the others held, and keeps
    the best only when it is strictly better than the current score; ties keep
    the current value, so the search never drifts away from the start (the
    simpler, uniform or zero setting) without evidence. Stops after a pass
    without a move, or after `max_passes`.

    Args:
        start: the starting array (copied).
        values: the grid of values each coordinate may take.
        score: `x -> float`; `-inf` marks an invalid `x`.
        fixed: indices (tuples) that keep their start value.
        max_passes: upper bound on passes.

    Returns:
        `(x, best_score)`.
    """
    x = np.array(start, dtype=np.float64)
    best = score(x)
    fixed = {tuple(i) for i in fixed}
    for _ in range(max_passes):
        moved = False
        for index in np.ndindex(x.shape):
            if index in fixed:
                continue
            current = chosen = x[index]
            for value in values:
                if value == current:
                    continue
                x[index] = value
                s = score(x)
                if s > best + _MIN_GAIN:
                    best, chosen = s, value
            x[index] = chosen
            moved |= chosen != current
        if not moved:
            break
    return x, best
