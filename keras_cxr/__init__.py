"""keras-cxr: chest X-ray classification with Keras 3 on the torch backend."""

from keras_cxr._backend import ensure_torch_backend

ensure_torch_backend()

__version__ = "0.1.0"

CLASS_NAMES = ("normal", "bacteria", "virus", "COVID-19")

# Importing these modules registers every custom Keras object, so that
# `keras.saving.load_model` works after `import keras_cxr`.
from keras_cxr import callbacks  # noqa: E402,F401
from keras_cxr import losses  # noqa: E402,F401
from keras_cxr import metrics  # noqa: E402,F401
from keras_cxr import models  # noqa: E402,F401
from keras_cxr import fast_ops  # noqa: E402

fast_ops.install()
