"""Registering keras-cxr's layers, losses and metrics with Keras's serialization."""

import importlib

# The modules whose classes carry `keras.saving.register_keras_serializable(package="keras_cxr")`.
SERIALIZABLE_MODULES = ("keras_cxr.models.layers", "keras_cxr.losses", "keras_cxr.metrics")


def register_serializables():
    """Register keras-cxr's layers, losses and metrics with Keras (imports Keras and torch).

    After it, `keras.saving.load_model` rebuilds keras-cxr models. Importing
    the modules registers their classes; calling it again costs nothing.
    """
    for module in SERIALIZABLE_MODULES:
        importlib.import_module(module)
