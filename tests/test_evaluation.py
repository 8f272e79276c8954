"""The evaluation summary's numbers, by hand."""

import numpy as np

from keras_cxr.evaluation import classification_summary, format_summary, pair_confusion

CLASSES = ("normal", "bacteria", "virus", "COVID-19")


def test_bacteria_virus_confusion_counted_by_hand():
    # true:      bacteria x4 (3 right, 1 as virus), virus x2 (both as bacteria), normal x2 right
    y_true = np.array([1, 1, 1, 1, 2, 2, 0, 0])
    y_pred = np.array([1, 1, 1, 2, 1, 1, 0, 0])
    summary = classification_summary(y_true, np.eye(4)[y_pred], CLASSES)
    assert summary["bacteria_virus_confusion"] == {"bacteria_as_virus": 0.25, "virus_as_bacteria": 1.0,
                                                   "rate": 0.5}
    assert "bacteria/virus confusion 0.5000 (bacteria as virus 0.2500, virus as bacteria 1.0000)" in \
        format_summary(summary)


def test_pair_confusion_without_the_classes_or_rows():
    assert pair_confusion(np.eye(2, dtype=int), ["a", "b"], "bacteria", "virus") is None
    empty = pair_confusion(np.zeros((2, 2), int), ["bacteria", "virus"], "bacteria", "virus")
    assert empty == {"bacteria_as_virus": 0.0, "virus_as_bacteria": 0.0, "rate": 0.0}
    summary = classification_summary(np.array([0, 1]), np.eye(2), ("cat", "dog"))
    assert summary["bacteria_virus_confusion"] is None and "bacteria/virus" not in format_summary(summary)
