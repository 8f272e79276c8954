"""Run the same code with Keras's own implementation and with keras_cxr.accel."""

import pytest

from keras_cxr import accel
from keras_cxr.accel.switch import switched_off


def both(fn):
    """(Keras's own result, the accelerated result) of `fn()`."""
    if switched_off():
        pytest.skip("KERAS_CXR_ACCEL=0: acceleration is off for this run")
    assert not accel.active()
    reference = fn()
    with accel.enabled():
        fast = fn()
    return reference, fast
