"""A cheaper "is any argument symbolic?" check for every `keras.ops` call.

Every `keras.ops` call first asks `any_symbolic_tensors`, which flattens each
argument with pytree: about 10 us per op, 700 times in a Swin-T forward
pass. `install()` points every Keras module that imported the function by
name at a version that answers plain tensors, variables, numbers and flat
shapes without the walk, and asks Keras's own check for everything else.
"""

import sys

import torch

_keras_any_symbolic_tensors = None
_eager_leaves = frozenset()  # argument types that are never symbolic and never nested; set by `install`


def probe():
    from keras.src.backend.common import keras_tensor

    if not callable(getattr(keras_tensor, "any_symbolic_tensors", None)):
        return "keras.src.backend.common.keras_tensor has no any_symbolic_tensors"
    return None


def _eager(x):
    """Whether `x` is a leaf of those types, or a flat list or tuple of them (a shape, say)."""
    kind = type(x)
    return kind in _eager_leaves or (kind in (tuple, list) and all(type(i) in _eager_leaves for i in x))


def any_symbolic_tensors(args=None, kwargs=None):
    """Keras's `any_symbolic_tensors` without its pytree walk over plain tensors and numbers."""
    for items in (args or (), kwargs.values() if kwargs else ()):
        for x in items:
            if not _eager(x) and _keras_any_symbolic_tensors((x,)):
                return True
    return False


def _rebind(new, old):
    """Point every Keras module that imported `old` by name at `new`."""
    for name, module in list(sys.modules.items()):
        if name.startswith("keras.src") and getattr(module, "any_symbolic_tensors", None) is old:
            module.any_symbolic_tensors = new


def install():
    global _keras_any_symbolic_tensors, _eager_leaves
    from keras.src import backend
    from keras.src.backend.common import keras_tensor

    _eager_leaves = frozenset({torch.Tensor, torch.nn.Parameter, backend.Variable, int, float, bool, str, type(None)})
    _keras_any_symbolic_tensors = keras_tensor.any_symbolic_tensors
    _rebind(any_symbolic_tensors, _keras_any_symbolic_tensors)


def uninstall():
    global _keras_any_symbolic_tensors
    _rebind(_keras_any_symbolic_tensors, any_symbolic_tensors)
    _keras_any_symbolic_tensors = None
