"""The explicit mark of a keras-cxr architecture.

`keras_cxr.models.build` marks the models it builds from keras-cxr's own
families, and keras-cxr's loaders mark the models they load. Only marked
models have their graph walked (`keras_cxr.accel.graph`) and their inference
replayed from a trace (`keras_cxr.accel.trace`): both rely on layers whose
Python code branches on shapes only and needs no call context, which holds
for keras-cxr's families and is not known for anyone else's model. A name
registered with `keras_cxr.models.register` is not marked unless its spec
says so.
"""

import weakref

_MARKED = weakref.WeakSet()


def mark(model):
    """Mark `model` as a keras-cxr architecture; returns it."""
    _MARKED.add(model)
    return model


def is_marked(model):
    """Whether `model` carries the mark."""
    try:
        return model in _MARKED
    except TypeError:  # unhashable objects are never marked
        return False
