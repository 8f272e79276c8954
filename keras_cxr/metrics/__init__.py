"""Metrics for keras-cxr: streaming Keras `MacroF1` and NumPy helpers."""

from keras_cxr.metrics.macro_f1 import MacroF1
from keras_cxr.metrics.macro_f1 import confusion_matrix
from keras_cxr.metrics.macro_f1 import macro_f1
from keras_cxr.metrics.macro_f1 import per_class_f1

__all__ = ["MacroF1", "confusion_matrix", "macro_f1", "per_class_f1"]
