"""Global-batch dropout masks: two ranks' halves together equal one process's draw."""

import keras
import numpy as np
import pytest
import torch

from keras_cxr.distributed.context import Context
from keras_cxr.distributed.randomness import global_dropout_masks


def _dropout(x, **kwargs):
    from keras.src.backend.torch import random as torch_random

    return torch_random.dropout(x, 0.3, **kwargs)


@pytest.mark.parametrize("kind", ["unseeded", "seeded", "noise_shape"])
def test_two_ranks_draw_the_halves_of_the_single_process_mask(kind):
    x = torch.randn(8, 5, 3) + 2.0

    def run(rows, context):
        keras.utils.set_random_seed(11)  # torch and Keras's global seed generator, as every rank starts
        kwargs = {}
        if kind == "seeded":
            kwargs["seed"] = keras.random.SeedGenerator(5)
        if kind == "noise_shape":
            kwargs["noise_shape"] = (None, 1, 3)  # one mask per row and channel, shared along axis 1
        with global_dropout_masks(context):
            return _dropout(rows, **kwargs)

    whole = run(x, None)
    halves = torch.cat([run(x[4 * r : 4 * (r + 1)], Context(r, 2)) for r in range(2)])
    np.testing.assert_array_equal(halves.numpy(), whole.numpy())
    assert 0.1 < (whole == 0).float().mean() < 0.5
    assert not torch.equal(halves[:4] == 0, halves[4:] == 0)  # the ranks do not reuse one mask


def test_the_scope_restores_keras_dropout():
    from keras.src.backend.torch import random as torch_random

    original = torch_random.dropout
    with global_dropout_masks(Context(0, 2)):
        assert torch_random.dropout is not original
    assert torch_random.dropout is original
    with global_dropout_masks(None):
        assert torch_random.dropout is original
