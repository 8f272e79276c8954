"""Where a model looked: class-activation maps for every keras-cxr family, as arrays and PNGs.

`ClassActivationMapper` computes maps for a batch (Grad-CAM, Grad-CAM++,
integrated gradients); `explain_csv` writes them for the rows of a table CSV
(`keras-cxr explain`).
"""

from keras_cxr.explain.cam import METHODS, ActivationMaps, ClassActivationMapper
from keras_cxr.explain.features import ExplainError, FeatureLayout, feature_model
from keras_cxr.explain.files import explain_csv
from keras_cxr.explain.integrated import integrated_gradients

__all__ = ["METHODS", "ActivationMaps", "ClassActivationMapper", "ExplainError", "FeatureLayout", "explain_csv",
           "feature_model", "integrated_gradients"]
