"""AverageBatchNormStatistics: 2 gloo ranks end an epoch with the mean of their moving statistics."""

import numpy as np
import pytest

from tests.distributed.ranks import run_ranks

pytestmark = pytest.mark.slow


def _epoch_end(context):
    import keras

    from keras_cxr.callbacks import AverageBatchNormStatistics

    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(3)(inputs))
    frozen = keras.layers.BatchNormalization(trainable=False)
    model = keras.Model(inputs, frozen(hidden))
    bn = model.layers[2]
    bn.moving_mean.assign(np.full(3, 1.0 + 2 * context.rank, "float32"))  # rank 0: 1, rank 1: 3
    bn.moving_variance.assign(np.array([1.0, 2.0, 4.0], "float32") * (context.rank + 1))
    frozen.moving_mean.assign(np.full(3, float(context.rank), "float32"))
    callback = AverageBatchNormStatistics(context)
    callback.set_model(model)
    callback.on_epoch_end(0)
    return (keras.ops.convert_to_numpy(bn.moving_mean), keras.ops.convert_to_numpy(bn.moving_variance),
            keras.ops.convert_to_numpy(frozen.moving_mean))


def test_moving_statistics_become_the_mean_over_ranks_and_frozen_layers_stay():
    for rank, (mean, variance, frozen_mean) in enumerate(run_ranks(_epoch_end)):
        np.testing.assert_array_equal(mean, [2.0, 2.0, 2.0])
        np.testing.assert_array_equal(variance, [1.5, 3.0, 6.0])
        np.testing.assert_array_equal(frozen_mean, [float(rank)] * 3)  # not trainable: not averaged
