"""Opt-in speed-ups for Keras on the torch backend, scoped and version-gated.

Nothing here runs at import. `enable()` replaces a set of private Keras,
keras-hub and torch functions with faster ones that give the same results
(`PATCHES` lists each with its target and the versions its tests ran on);
`disable()` puts the originals back; `with enabled():` does both around a
block, and `with disabled():` the reverse (Keras's own code for a block,
then whatever was on before). The `keras-cxr` commands,
`keras_cxr.training.fit_recipe` and `keras_cxr.predictor.predict_csv` turn
it on for their own work and off again. In your own code, one line:

```python
import keras_cxr.accel
keras_cxr.accel.enable()   # or: with keras_cxr.accel.enabled(): ...
```

A patch whose library versions are outside its tested range, or whose
target no longer looks as expected (its probe), is skipped with one
`AccelWarning` naming it and the versions, and Keras's own code runs for
it. ``KERAS_CXR_ACCEL=0`` in the environment turns everything off.

Models built by `keras_cxr.models.build` (and loaded by keras-cxr's
loaders) carry a mark (`keras_cxr.accel.marks`); only marked models have
their graph walked without `Layer.__call__` and their inference traced.

`keep_freed_memory()` is separate: it sets glibc's heap for the whole
process, for good (`keras_cxr.accel.heap`); the `keras-cxr` command does it
for its own process.
"""

from keras_cxr.accel.patches import PATCHES
from keras_cxr.accel.switch import active, disable, disabled, enable, enabled, install_waiting, status
from keras_cxr.accel.versions import AccelWarning


def prepare(model):
    """Ready a freshly built or loaded model for the fast paths (outputs unchanged).

    While the conv patch is on, stores its convolution kernels in torch's
    memory order (`keras_cxr.accel.conv.relayout_kernels`); installs the
    Swin patch if keras_hub was imported since `enable()`. A no-op when
    acceleration is off.
    """
    if not active():
        return model
    install_waiting()
    if active("conv"):
        from keras_cxr.accel import conv

        conv.relayout_kernels(model)
    return model


def inference_call(model, x):
    """`model(x, training=False)`, replayed from a verified trace for marked models while the trace patch is on."""
    if active("trace"):
        from keras_cxr.accel import trace

        return trace.traced_call(model, x)
    return model(x, training=False)


def keep_freed_memory():
    """Keep freed memory in glibc's heap for the rest of the process (see `keras_cxr.accel.heap`).

    Returns:
        Whether the setting is in place (False without glibc).
    """
    from keras_cxr.accel import heap

    return heap.install()


__all__ = ["PATCHES", "AccelWarning", "active", "disable", "disabled", "enable", "enabled", "inference_call",
           "keep_freed_memory", "prepare", "status"]
