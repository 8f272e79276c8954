"""Pseudo-labels: confident predictions on unlabeled rows, as a training table.

The seed report added test predictions with confidence >= 0.95 back into
training at sample weight 0.5 (+3.29 validation points), but one threshold
for all classes let the head classes dominate; class-aware thresholds
(normal 0.92, bacteria 0.90, virus 0.85, COVID-19 0.80) and a cap per class
keep the pseudo-labeled rows closer to the real class mix.

The output is a table CSV in the training format (filename, one-hot class
columns, ``sample_weight``, plus an informational ``confidence`` column) that
a recipe adds to its training rows with ``data.extra_train``. `fit` refuses
pseudo-labeled rows that are also validation rows.

Example:

```python
probs = read_probabilities("test_probs.csv")
frame = select_pseudo_labels(probs, parse_thresholds("normal=0.92,bacteria=0.9,virus=0.85,COVID-19=0.8",
                                                      probs.class_names), weight=0.5)
write_csv_atomic(frame, "pseudo.csv")
```
"""

import numpy as np
import pandas as pd

from keras_cxr.errors import FieldError


def parse_thresholds(spec, class_names):
    """``"normal=0.92,bacteria=0.9,..."`` -> `{class: threshold}` for every class.

    Raises:
        ValueError: naming the unknown class, the missing classes or the bad value.
    """
    thresholds = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise FieldError(f"{{thresholds}}: expected CLASS=VALUE, got {part.strip()!r}", thresholds="thresholds")
        if name not in class_names:
            raise FieldError(f"{{thresholds}}: unknown class {name!r}; classes are {', '.join(class_names)}",
                             thresholds="thresholds")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise FieldError(f"{{thresholds}}: {name}={value.strip()!r} is not a number", thresholds="thresholds") from None
    missing = [c for c in class_names if c not in thresholds]
    if missing:
        raise FieldError(f"{{thresholds}}: no threshold for {', '.join(missing)} (give one for every class)",
                         thresholds="thresholds")
    return thresholds


def select_pseudo_labels(probs, thresholds, max_per_class=None, weight=0.5):
    """Rows whose top probability reaches their predicted class's threshold.

    Args:
        probs: `keras_cxr.probabilities.Probabilities` of unlabeled rows.
        thresholds: one float for every class, or `{class name: threshold}`.
        max_per_class: keep at most this many rows per class, the most
            confident ones; None keeps all.
        weight: the rows' ``sample_weight`` in training.

    Returns:
        A DataFrame in the training-table format, rows in `probs`' order.
    """
    class_names = probs.class_names
    if isinstance(thresholds, dict):
        cut = np.array([thresholds[c] for c in class_names], np.float64)
    else:
        cut = np.full(len(class_names), float(thresholds))
    for name, value in zip(class_names, cut):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"threshold for {name} must be in (0, 1], got {value:g}")
    if not weight > 0:
        raise FieldError(f"{{weight}} must be > 0, got {weight:g}", weight="weight")
    if max_per_class is not None and max_per_class < 1:
        raise FieldError(f"{{max_per_class}} must be >= 1, got {max_per_class}", max_per_class="max_per_class")

    predicted = probs.values.argmax(axis=1)
    confidence = probs.values.max(axis=1)
    keep = confidence >= cut[predicted]
    if max_per_class is not None:
        for c in range(len(class_names)):
            rows = np.flatnonzero(keep & (predicted == c))
            if len(rows) > max_per_class:
                # stable sort: equal confidences keep the file's order
                ranked = rows[np.argsort(-confidence[rows], kind="stable")]
                keep[ranked[max_per_class:]] = False
    rows = np.flatnonzero(keep)
    one_hot = np.zeros((len(rows), len(class_names)), np.int64)
    one_hot[np.arange(len(rows)), predicted[rows]] = 1
    frame = pd.DataFrame(one_hot, columns=list(class_names))
    frame.insert(0, "new_filename", [probs.filenames[i] for i in rows])
    frame["sample_weight"] = float(weight)
    frame["confidence"] = np.round(confidence[rows], 6)
    return frame
