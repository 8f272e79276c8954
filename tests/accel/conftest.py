import pytest

from keras_cxr import accel
from keras_cxr.accel.switch import switched_off


@pytest.fixture
def accelerated():
    """The block runs with every patch on; Keras's own code again after."""
    if switched_off():
        pytest.skip("KERAS_CXR_ACCEL=0: acceleration is off for this run")
    accel.enable()
    yield
    accel.disable()
