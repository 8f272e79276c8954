"""Where a model looked: class-activation maps for every keras-cxr family, as arrays and PNGs.

`ClassActivationMapper` computes maps for a batch; `explain_csv` writes them
for the rows of a table CSV (`keras-cxr explain`).
"""

from keras_cxr.explain.cam import METHODS, ActivationMaps, ClassActivationMapper
from keras_cxr.explain.features import ExplainError, FeatureLayout, feature_model
from keras_cxr.explain.files import explain_csv

__all__ = ["METHODS", "ActivationMaps", "ClassActivationMapper", "ExplainError", "FeatureLayout", "explain_csv",
           "feature_model"]
