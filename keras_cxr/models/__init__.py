"""keras-cxr classification models: a registry of backbones with one head.

`build(name, ...)` returns a functional `keras.Model` mapping 0-255 RGB images
to class probabilities; `names()` lists the names and `spec(name)` describes
one. Importing this package and listing or describing names imports neither
Keras, keras_hub nor torch: `build` and the family builders import them.

The custom layers (`ImageNetNormalization`, `XRVNormalization`,
`ClassTokenPooling`, `DINOV2Features`) live in `keras_cxr.models.layers`, which imports Keras and
registers them for `keras.saving.load_model`. It is imported on first access
to one of them here, by any `build`, and at once by this import when Keras is
already loaded.
"""

import importlib
import sys

from keras_cxr.models.registry import ModelSpec, build, names, register, register_family, spec

# Importing the family modules registers their names.
from keras_cxr.models import convnext  # noqa: F401
from keras_cxr.models import cxr_resnet  # noqa: F401
from keras_cxr.models import densenet  # noqa: F401
from keras_cxr.models import dinov2  # noqa: F401
from keras_cxr.models import efficientnet_rw  # noqa: F401
from keras_cxr.models import efficientnet_v2  # noqa: F401
from keras_cxr.models import swin  # noqa: F401

_LAYERS = ("ClassTokenPooling", "DINOV2Features", "ImageNetNormalization", "XRVNormalization")

if "keras" in sys.modules:
    # Keras costs nothing more now, and `keras_cxr.register_serializables()`
    # (which imports this package) then registers the custom layers.
    from keras_cxr.models import layers  # noqa: F401


def __getattr__(name):
    if name == "layers":
        return importlib.import_module("keras_cxr.models.layers")
    if name in _LAYERS:
        return getattr(importlib.import_module("keras_cxr.models.layers"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClassTokenPooling", "DINOV2Features", "ImageNetNormalization", "ModelSpec", "XRVNormalization", "build",
           "names", "register", "register_family", "spec"]
