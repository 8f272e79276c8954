"""Scores for a set of class probabilities against one-hot labels."""

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(y_true_ids, probs, n_bins=15):
    """Top-label ECE: bin by confidence, average |accuracy - confidence|."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true_ids
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_summary(y_true_ids, probs, class_names):
    """Macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true_ids: (N,) integer class ids.
        probs: (N, C) probabilities; the prediction is their argmax.
        class_names: the C class names, in column order.

    Returns:
        A JSON-ready dict.
    """
    y_true_ids = np.asarray(y_true_ids)
    y_pred = np.asarray(probs).argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true_ids, y_pred, labels=labels, zero_division=0
    )
    return {
        "macro_f1": float(skm.f1_score(y_true_ids, y_pred, average="macro")),
        "accuracy": float((y_true_ids == y_pred).mean()),
        "ece": expected_calibration_error(y_true_ids, np.asarray(probs)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": skm.confusion_matrix(y_true_ids, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }
