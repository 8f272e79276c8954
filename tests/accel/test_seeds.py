"""`keras_cxr.accel.seeds` draws Keras's own random numbers from seed generators."""

import keras
import numpy as np
import torch
from keras.src.backend.torch import random as torch_random

from keras_cxr.accel import seeds
from tests.accel.helpers import both


def draws(generator, extra_assign=False):
    """A run of seeded draws of several kinds; optionally an outside write to the state mid-way."""
    out = [keras.random.uniform((3,), seed=generator), keras.random.normal((2, 2), seed=generator)]
    x = torch.ones(4, 2, 2, 3)
    out.append(keras.random.dropout(x, 0.5, noise_shape=(4, 1, 1, 1), seed=generator))
    if extra_assign:
        generator.state.assign(np.array([11, 40], dtype=generator.state.dtype))  # a restored snapshot, say
    out += [keras.random.uniform((5,), seed=generator) for _ in range(3)]
    out.append(keras.layers.Dropout(0.3, noise_shape=(4, 1, 1, 1), seed=7)(x, training=True))
    return [keras.ops.convert_to_numpy(t) for t in out] + [keras.ops.convert_to_numpy(generator.state.value)]


def test_installed_while_enabled(accelerated):
    assert torch_random.torch_seed_generator is seeds._torch_seed_generator


def test_seeded_draws_equal_keras_including_after_an_outside_assign():
    for extra_assign in (False, True):
        reference, fast = both(lambda: draws(keras.random.SeedGenerator(5), extra_assign))
        assert len(fast) == len(reference) == 8
        for a, b in zip(fast, reference):
            np.testing.assert_array_equal(a, b)
    # The outside assign was seen: the draws after it differ from the run without it.
    assert not np.array_equal(draws(keras.random.SeedGenerator(5))[3], draws(keras.random.SeedGenerator(5), True)[3])


def test_state_advances_on_the_device_copy(accelerated):
    generator = keras.random.SeedGenerator(9)
    start = keras.ops.convert_to_numpy(generator.state.value).copy()
    for _ in range(4):
        keras.random.uniform((1,), seed=generator)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(generator.state.value), start + [0, 4])
