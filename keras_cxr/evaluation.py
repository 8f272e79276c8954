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


# Probabilities are clipped to this before a log (a row that gives its true class 0 scores -log(1e-12) ~ 27.6).
LOG_CLIP = 1e-12


def brier_score(y_true_ids, probs):
    """Multi-class Brier score: the mean over rows of the summed squared error against the one-hot label.

    0 is perfect; always predicting a wrong class with certainty scores 2.

    Example:

    ```python
    brier_score([0], [[0.7, 0.2, 0.1]])   # (0.3**2 + 0.2**2 + 0.1**2) = 0.14
    ```
    """
    probs = np.asarray(probs, dtype=np.float64)
    one_hot = np.eye(probs.shape[1])[np.asarray(y_true_ids)]
    return float(((probs - one_hot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(y_true_ids, probs):
    """Mean negative log of each row's probability for its true class (natural log, clipped at `LOG_CLIP`).

    Example:

    ```python
    negative_log_likelihood([0, 1], [[0.5, 0.5], [0.2, 0.8]])   # -(log 0.5 + log 0.8) / 2 = 0.4581
    ```
    """
    probs = np.asarray(probs, dtype=np.float64)
    true = probs[np.arange(len(probs)), np.asarray(y_true_ids)]
    return float(-np.log(np.clip(true, LOG_CLIP, 1.0)).mean())


def reliability_bins(y_true_ids, probs, n_bins=15):
    """Per-bin counts, mean confidence and accuracy, binned as `expected_calibration_error` bins them.

    Returns:
        A dict of `(n_bins,)` arrays: ``edges`` (`n_bins + 1`), ``count``,
        ``confidence`` and ``accuracy`` (NaN in empty bins).
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true_ids)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, correct.astype(np.float64), minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def calibration_scores(y_true_ids, probs, n_bins=15):
    """ECE (top-label, `n_bins` bins), Brier and NLL of `probs`, as a dict with those three keys."""
    probs = np.asarray(probs, dtype=np.float64)
    return {
        "ece": expected_calibration_error(np.asarray(y_true_ids), probs, n_bins),
        "brier": brier_score(y_true_ids, probs),
        "nll": negative_log_likelihood(y_true_ids, probs),
    }


def pair_confusion(confusion, class_names, first, second):
    """How often two classes are mistaken for each other, from a confusion matrix (rows true, columns predicted).

    Returns `None` when either class is missing, else a dict: `f"{first}_as_{second}"` (share of the true
    `first` rows predicted `second`), the reverse, and `rate` (both kinds of mistake over the rows of the two
    classes together).
    """
    if first not in class_names or second not in class_names:
        return None
    confusion = np.asarray(confusion)
    a, b = class_names.index(first), class_names.index(second)
    rows_a, rows_b = confusion[a].sum(), confusion[b].sum()

    def share(count, rows):
        return float(count / rows) if rows else 0.0

    return {
        f"{first}_as_{second}": share(confusion[a, b], rows_a),
        f"{second}_as_{first}": share(confusion[b, a], rows_b),
        "rate": share(confusion[a, b] + confusion[b, a], rows_a + rows_b),
    }


def classification_summary(y_true_ids, probs, class_names):
    """Macro-F1, accuracy, calibration (ECE, Brier, NLL), per-class precision/recall/F1/support, confusion matrix.

    With "bacteria" and "virus" among the classes, `bacteria_virus_confusion`
    (`pair_confusion`) shows the pneumonia classes' usual weak spot.

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
    confusion = skm.confusion_matrix(y_true_ids, y_pred, labels=labels)
    return {
        "macro_f1": float(skm.f1_score(y_true_ids, y_pred, average="macro")),
        "accuracy": float((y_true_ids == y_pred).mean()),
        "ece": expected_calibration_error(y_true_ids, np.asarray(probs)),
        "brier": brier_score(y_true_ids, probs),
        "nll": negative_log_likelihood(y_true_ids, probs),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
        "bacteria_virus_confusion": pair_confusion(confusion, list(class_names), "bacteria", "virus"),
        "class_names": list(class_names),
    }


def evaluate_probabilities(probs_path, labels_csv, filename_column="new_filename"):
    """Score a probability file against a labeled table CSV.

    Rows are matched by filename (the two files may list them in different
    orders); a filename in one file but not the other is an error.

    Returns:
        `classification_summary`'s dict, plus ``rows`` and the two paths.
    """
    from keras_cxr.data import read_table
    from keras_cxr.probabilities import read_probabilities

    probs = read_probabilities(probs_path, filename_column=filename_column)
    table = read_table(labels_csv, class_names=probs.class_names, filename_column=filename_column,
                       labels="required", check_files=False)
    probs = probs.aligned_to(table.filenames, labels_csv)
    summary = classification_summary(table.class_ids, probs.values, probs.class_names)
    return {"probabilities": str(probs_path), "labels": str(labels_csv), "rows": len(table), **summary}


def format_summary(summary):
    """A plain-text report of `classification_summary` for the terminal."""
    names = summary["class_names"]
    width = max(10, *(len(n) for n in names))
    lines = [
        f"Macro-F1 {summary['macro_f1']:.4f}   accuracy {summary['accuracy']:.4f}   "
        f"ECE {summary['ece']:.4f}"
        + (f"   Brier {summary['brier']:.4f}   NLL {summary['nll']:.4f}" if "brier" in summary else "")
        + (f"   ({summary['rows']} rows)" if "rows" in summary else ""),
        "",
        f"{'class':<{width}}  precision  recall      F1  support",
    ]
    for name in names:
        c = summary["per_class"][name]
        lines.append(f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * width + "  " + " ".join(f"{n[:8]:>8}" for n in names)]
    for name, row in zip(names, summary["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:8d}" for v in row))
    pair = summary.get("bacteria_virus_confusion")
    if pair:
        lines += ["", f"bacteria/virus confusion {pair['rate']:.4f} (bacteria as virus {pair['bacteria_as_virus']:.4f}, "
                      f"virus as bacteria {pair['virus_as_bacteria']:.4f})"]
    return "\n".join(lines)
