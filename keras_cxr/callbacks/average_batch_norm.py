"""Average BatchNormalization moving statistics over the ranks of a data-parallel run."""

import keras

from keras_cxr.callbacks.swa import average_moving_statistics
from keras_cxr.callbacks.swa import batch_norm_layers


class AverageBatchNormStatistics(keras.callbacks.Callback):
    """At every epoch end, replace each rank's BatchNormalization moving statistics by their mean over the ranks.

    With per-rank batch statistics (data-parallel training without
    synchronised batch norm) every rank's moving mean and variance drift
    apart; averaging them at each epoch end (as timm's `distribute_bn` does)
    gives every rank, the validation and the checkpoint one set of
    statistics. With synchronised batch norm they are equal already and
    averaging leaves them unchanged. Put it before the callbacks that
    evaluate or save the model.

    Args:
        context: a `keras_cxr.distributed.Context` (`average_` is used).

    Example:

    ```python
    context = keras_cxr.distributed.initialize()
    model.fit(train, callbacks=[AverageBatchNormStatistics(context), MacroF1Checkpoint(val)])
    ```
    """

    def __init__(self, context):
        super().__init__()
        self.context = context

    def on_epoch_end(self, epoch, logs=None):
        average_moving_statistics(batch_norm_layers(self.model), self.context)
