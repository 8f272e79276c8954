"""keras-cxr: chest X-ray classification with Keras 3 on the torch backend.

Importing the package is light: it pins Keras to the torch backend (an
environment setting, checked against an already imported Keras), and loads
nothing else. Subpackages load on first use (`keras_cxr.models`,
`keras_cxr.data`, ...), and nothing in Keras or torch is patched: speed-ups
are opt-in (`keras_cxr.accel`).

keras-cxr's layers, losses and metrics register themselves with Keras's
serialization when their modules are imported, so that
`keras.saving.load_model` can rebuild saved models. When Keras is already
imported, `import keras_cxr` registers them at once; otherwise they register
with the first use of `keras_cxr.models` / `losses` / `metrics`, or use
`keras_cxr.load_model(path)`.
"""

import importlib
import sys

from keras_cxr._backend import ensure_torch_backend

ensure_torch_backend()

from keras_cxr.constants import CLASS_NAMES, FILENAME_COLUMN  # noqa: E402

__version__ = "0.1.0"

from keras_cxr.serialization import register_serializables  # noqa: E402

_SUBPACKAGES = ("accel", "blend", "callbacks", "data", "losses", "metrics", "models")


def load_model(path):
    """Load a keras-cxr `.keras` file safely (Keras safe mode, no compile), marked for `keras_cxr.accel`."""
    from keras_cxr.predictor import load_model_file

    return load_model_file(path)


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"keras_cxr.{name}")
    raise AttributeError(f"module 'keras_cxr' has no attribute {name!r}")


if "keras" in sys.modules:  # Keras is loaded already: registering costs nothing more
    register_serializables()

__all__ = ["CLASS_NAMES", "FILENAME_COLUMN", "__version__", "load_model", "register_serializables", *_SUBPACKAGES]
