"""Pin Keras to the torch backend before anything imports it.

Importing Keras with its TensorFlow backend in a process that also imports
torch can crash, so keras_cxr decides the backend before the first
``import keras``.
"""

import os
import sys


def ensure_torch_backend():
    # Keras imports TensorFlow for saving and loading `.keras` files; keep its
    # C++ start-up chatter (oneDNN, CUDA stubs) out of the user's terminal.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    requested = os.environ.setdefault("KERAS_BACKEND", "torch")
    if requested != "torch":
        raise RuntimeError(
            f"keras_cxr runs on the torch backend, but KERAS_BACKEND={requested!r}. "
            "Unset KERAS_BACKEND or set it to 'torch' before importing keras_cxr."
        )
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        loaded = keras.backend.backend()
        if loaded != "torch":
            raise RuntimeError(
                f"Keras is already loaded with the {loaded!r} backend; keras_cxr "
                "needs 'torch'. Import keras_cxr before keras, or set "
                "KERAS_BACKEND=torch in the environment."
            )
