"""Stop training at the first non-finite loss, and say where it happened."""

import math

import keras


class NaNGuard(keras.callbacks.Callback):
    """Stops `fit` when the training loss becomes NaN or infinite.

    Unlike `keras.callbacks.TerminateOnNaN` it remembers where: `epoch` and
    `step` (both 1-based, as Keras prints them) and the `loss` value, so the
    caller can report them. Once the loss is not finite the weights usually
    are not either; `MacroF1Checkpoint` never saves a model whose
    predictions are not finite, so the best checkpoint stays as it was.

    Example:

    ```python
    guard = NaNGuard()
    model.fit(train, epochs=10, callbacks=[guard])
    if guard.tripped:
        print(f"diverged at epoch {guard.epoch}, step {guard.step}")
    ```
    """

    def __init__(self):
        super().__init__()
        self.tripped = False
        self.epoch = None
        self.step = None
        self.loss = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.tripped:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            self.tripped, self.epoch, self.step, self.loss = True, self._epoch + 1, batch + 1, loss
            self.model.stop_training = True
