"""BatchNormalization statistics across ranks: synchronised batch moments, averaged moving statistics."""

import contextlib

import keras

from keras_cxr import accel
from keras_cxr.accel.batchnorm import GLOBAL_MOMENTS_MARK


@contextlib.contextmanager
def synchronized_batch_norm(context):
    """Within this scope, training-mode BatchNormalization uses the moments of the global batch.

    Each rank sums over its rows and an autograd-aware all-reduce adds the
    ranks' sums, so the forward and the backward pass equal one process with
    the whole batch up to summation order. The moments are computed as that
    process would: with `keras_cxr.accel`'s fused batch norm on, in two
    passes (the mean, then the squared deviations from it; the fused
    kernel's variance is exact), else by Keras's E[x^2] - E[x]^2. Layers with a mask use Keras's local moments. `None` or a
    one-rank context: no change.
    """
    if context is None or context.world_size < 2:
        yield
        return
    layer_class = keras.layers.BatchNormalization
    original = layer_class.__dict__["_moments"]
    layer_class._moments = _synchronized(original)
    try:
        yield
    finally:
        layer_class._moments = original


def _all_reduce(tensor):
    """torch's autograd-aware sum over ranks (its backward sums the ranks' gradients)."""
    import warnings

    from torch.distributed.nn import functional

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.13 points to a private successor
        return functional.all_reduce(tensor)


def _synchronized(original):
    import torch

    all_reduce = _all_reduce

    def _moments(self, inputs, mask):
        if mask is not None:
            return original(self, inputs, mask)
        x = inputs
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        axes = tuple(a % x.ndim for a in self._reduction_axes)
        count = 1
        for a in axes:
            count *= x.shape[a]
        if accel.active("batchnorm"):
            # The single-process path is then torch's fused kernel, whose variance is exact: two passes
            # (mean, then squared deviations from it) match it where E[x^2] - E[x]^2 loses digits.
            sums = all_reduce(torch.cat([x.sum(dim=axes), x.new_full((1,), float(count))]))
            total = sums[-1]
            mean = sums[:-1] / total
            shape = [1 if a in axes else n for a, n in enumerate(x.shape)]
            variance = all_reduce((x - mean.view(shape)).square().sum(dim=axes)) / total
        else:  # Keras's own formula, E[x^2] - E[x]^2, over the global batch
            sums = all_reduce(torch.cat([x.sum(dim=axes).reshape(-1), x.square().sum(dim=axes).reshape(-1),
                                         x.new_full((1,), float(count))]))
            total = sums[-1]
            channels = (sums.numel() - 1) // 2
            mean = sums[:channels] / total
            variance = sums[channels : 2 * channels] / total - mean.square()
        return mean.to(dtype), variance.to(dtype)

    setattr(_moments, GLOBAL_MOMENTS_MARK, True)
    return _moments
