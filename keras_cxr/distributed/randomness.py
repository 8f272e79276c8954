"""Dropout masks drawn for the global batch, so ranks together draw what one process draws."""

import contextlib


@contextlib.contextmanager
def global_dropout_masks(context):
    """Within this scope, Keras's torch dropout draws the mask of the whole global batch and keeps this rank's rows.

    Every rank starts from the same random state (same seed) and draws the
    same global mask, so dropout is independent across the rows of the global
    batch (without this, every rank would reuse one mask for its rows), the
    random generators advance alike on every rank, and on a CPU the masks are
    exactly those of one process with the whole batch (torch's CPU dropout is
    `bernoulli_` on a tensor the input's shape). Assumes equal per-rank
    batches along axis 0, as data-parallel `CXRDataset`s give. `None` or a
    one-rank context: no change.
    """
    if context is None or context.world_size < 2:
        yield
        return
    from keras.src.backend.torch import random as torch_random

    original = torch_random.dropout
    torch_random.dropout = _global_dropout(original, context)
    try:
        yield
    finally:
        torch_random.dropout = original


def _global_dropout(original, context):
    import torch
    from keras.src.backend.torch import random as torch_random

    world, rank = context.world_size, context.rank

    def dropout(inputs, rate, noise_shape=None, seed=None):
        if rate in (0.0, 1.0) or inputs.ndim == 0:
            return original(inputs, rate, noise_shape=noise_shape, seed=seed)
        keep = 1.0 - rate
        rows = inputs.shape[0]
        unseeded = isinstance(seed, torch_random.SeedGenerator) and seed._initial_seed is None
        if (seed is not None and not unseeded) or noise_shape is not None:
            shape = [inputs.shape[i] if d is None else d for i, d in enumerate(noise_shape or inputs.shape)]
            per_row = shape[0] == rows  # else one draw shared by all rows (noise shape 1 along the batch)
            if per_row:
                shape[0] *= world
            generator = torch_random.torch_seed_generator(seed)
            mask = torch.bernoulli(torch.full(shape, keep, device=inputs.device), generator=generator)
            if per_row:
                mask = mask[rank * rows : (rank + 1) * rows]
            mask = torch.broadcast_to(mask.bool(), inputs.shape)
            return torch.where(mask, inputs / keep, torch.zeros_like(inputs))
        noise = torch.empty((rows * world, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
        noise.bernoulli_(keep).div_(keep)
        return inputs * noise[rank * rows : (rank + 1) * rows]

    return dropout
