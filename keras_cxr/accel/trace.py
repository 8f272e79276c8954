"""Inference of marked models through a cached, verified TorchScript trace.

Keras's per-layer Python dispatch costs about as much as the arithmetic of a
small network's forward pass; a trace replays only the torch operations.
Each input shape is traced once and checked against the eager forward pass
before it is trusted. A trace replays the operations of one forward pass,
so a layer whose Python code branches on tensor values would be replayed
wrongly on other inputs: only marked models (`keras_cxr.accel.marks`), whose
layers branch on shapes only, are traced (a test traces every family and
compares it with the eager model on fresh inputs).
"""

import warnings
import weakref

import keras
import torch

from keras_cxr.accel import marks

# model -> {(shape, dtype): traced module, or None when tracing failed or disagreed}
_TRACES = weakref.WeakKeyDictionary()
_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _trace(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values baked into the graph
        try:
            traced = torch.jit.trace(model, (x,), check_trace=False)
        except Exception:  # noqa: BLE001  - any failure means: stay eager
            return None
    expected, got = model(x, training=False), traced(x)
    same = (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and torch.allclose(got.float(), expected.float(), **_TOLERANCE))
    return traced if same else None


def traced_call(model, x):
    """`model(x, training=False)` through a cached, verified trace, for a marked `model`.

    Call it under `torch.no_grad()` with the model in eval mode (as
    `keras_cxr.predict.inference_mode` does). Unmarked models, and traces
    that fail or disagree with the eager output on their first batch, run
    eagerly.
    """
    if not marks.is_marked(model):
        return model(x, training=False)
    x = keras.ops.convert_to_tensor(x)
    key = (tuple(x.shape), str(x.dtype))
    traces = _TRACES.setdefault(model, {})
    if key not in traces:
        traces[key] = _trace(model, x)
    traced = traces[key]
    return model(x, training=False) if traced is None else traced(x)


def probe():
    return None if hasattr(torch.jit, "trace") else "torch.jit has no trace"


def install():
    """Nothing to replace: `keras_cxr.accel.inference_call` traces while this patch is on."""


def uninstall():
    """Nothing to restore."""
