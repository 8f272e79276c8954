"""Seed every random number generator a run touches."""

import random

import numpy as np


def set_seed(seed):
    """Like `keras.utils.set_random_seed`, without importing TensorFlow.

    `keras.utils.set_random_seed` imports TensorFlow whenever it is
    installed (keras-hub installs it), which costs seconds and hundreds of
    MB in a torch-only process.
    """
    import torch
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    # Keras 3.12 names the attribute inline; later versions export the constant.
    global_state.set_global_attribute(getattr(seed_generator, "GLOBAL_SEED_GENERATOR", "global_seed_generator"), None)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
