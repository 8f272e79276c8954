"""Warm up the momentum of the optimizer's weight EMA (`use_ema=True`)."""

import keras

from keras_cxr.callbacks.warmup_cosine import ema_optimizer


def ema_warmup_momentum(step, momentum, warmup_steps=10):
    """EMA momentum used for the (0-based) optimizer step `step`.

    `min(momentum, (1 + step) / (warmup_steps + step))`: early in training
    the average forgets quickly, later it settles at `momentum` (the
    `num_updates` rule of TensorFlow's `ExponentialMovingAverage`). Keras's own EMA uses `momentum` from the second
    step on, so after `n` steps the first step's weights still make up
    `momentum ** n` of the average: 41% after the 900 steps of a 20-epoch
    run on cxr4 with the default 0.999, with BatchNormalization statistics
    that belong to the last weights. With the warmup the average covers
    about the last `1 / (warmup_steps - 1)` of the steps taken so far, until
    `momentum` caps it.

    Args:
        step: global optimizer step, 0-based.
        momentum: the momentum reached after warmup.
        warmup_steps: the warmup's time constant in steps (> 1).

    Returns:
        The momentum, a Python float.
    """
    return min(float(momentum), (1.0 + step) / (warmup_steps + step))


class EMAWarmup(keras.callbacks.Callback):
    """Warm up the momentum of the optimizer's exponential moving average of weights.

    Before every training batch this callback sets the optimizer's
    `ema_momentum` to `ema_warmup_momentum(step, momentum, warmup_steps)`;
    at the end of training it puts `momentum` back. Keras reads
    `ema_momentum` at each step, so nothing else changes: the EMA variables,
    their saving and `keras.callbacks.SwapEMAWeights` are Keras's own. Use it
    whenever the run is short next to `1 / (1 - ema_momentum)` steps, or the
    averaged model keeps a share of its untrained first weights. Under
    `mixed_float16` the momentum is set on the `LossScaleOptimizer`'s inner
    optimizer. Does nothing when the optimizer has no EMA.

    The step counts from the optimizer's `iterations` at the start of `fit`
    (read once), so `fit(initial_epoch=k)` after a restore continues the warmup.

    Args:
        momentum: the momentum after warmup. Defaults to the optimizer's
            `ema_momentum` at the start of training.
        warmup_steps: the warmup's time constant in steps. Defaults to 10.

    Example:

    ```python
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.999), loss=FocalLoss())
    model.fit(train_ds, epochs=20, callbacks=[EMAWarmup(), keras.callbacks.SwapEMAWeights()])
    ```
    """

    def __init__(self, momentum=None, warmup_steps=10):
        super().__init__()
        if momentum is not None and not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        if warmup_steps <= 1:
            raise ValueError(f"warmup_steps must be > 1, got {warmup_steps}")
        self.momentum = momentum
        self.warmup_steps = warmup_steps
        self._optimizer = None
        self._target = None
        self._step = 0

    def on_train_begin(self, logs=None):
        self._optimizer = ema_optimizer(self.model)
        if self._optimizer is None:
            return
        self._target = float(self.momentum if self.momentum is not None else self._optimizer.ema_momentum)
        self._step = int(keras.ops.convert_to_numpy(self._optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        if self._optimizer is not None:
            self._optimizer.ema_momentum = ema_warmup_momentum(self._step, self._target, self.warmup_steps)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1

    def on_train_end(self, logs=None):
        if self._optimizer is not None:
            self._optimizer.ema_momentum = self._target
