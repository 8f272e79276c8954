"""keras-cxr classification models: a registry of backbones with one head.

`build(name, ...)` returns a functional `keras.Model` mapping 0-255 RGB images
to class probabilities; `names()` lists the names and `spec(name)` describes
one. Importing this package registers the custom layers that saved models
need, and does not import keras_hub (families import it when they build).
"""

from keras_cxr.models.layers import ClassTokenPooling, ImageNetNormalization
from keras_cxr.models.registry import ModelSpec, build, names, spec

# Importing the family modules registers their names.
from keras_cxr.models import convnext  # noqa: F401
from keras_cxr.models import cxr_resnet  # noqa: F401
from keras_cxr.models import dinov2  # noqa: F401
from keras_cxr.models import efficientnet_rw  # noqa: F401
from keras_cxr.models import efficientnet_v2  # noqa: F401
from keras_cxr.models import swin  # noqa: F401

__all__ = ["ClassTokenPooling", "ImageNetNormalization", "ModelSpec", "build", "names", "spec"]
