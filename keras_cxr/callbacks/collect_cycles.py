"""`CollectCycles`: free the reference cycles Keras leaves behind each step."""

import gc

import keras


class CollectCycles(keras.callbacks.Callback):
    """Run Python's cycle collector after every training batch.

    On the torch backend, Keras 3.15 leaves the input tensors of layers
    called with a list (e.g. the `Add` of a residual block, with their
    autograd graphs) in reference cycles: `keras.src.tree.torchtree_impl`
    passes torch's self-referencing `tree_flatten` helper an `is_leaf`
    closure over the structure (keras-team/keras#23110). Refcounting cannot
    free them, and a cycle that reaches the oldest generation waits for a
    full collection, which CPython runs only once pending objects reach 25%
    of the long-lived heap (~0.5M objects after importing Keras, torch and
    TensorFlow): in practice never, so memory grows by hundreds of MB per
    epoch (7.1 GB after 20 epochs of `recipes/cpu.py` at 160 px, flat
    ~2.2 GB with this callback).

    A full collection is cheap (~3 ms) only when the long-lived heap is
    frozen: at the start of training the callback collects and calls
    `gc.freeze()`, at each epoch end it freezes that epoch's survivors
    (TensorFlow, imported by the first `model.save`, ...), and at the end of
    training it unfreezes. Frozen objects are still freed by refcounting. A
    heap the caller already froze is left as it is.

    Example:

    ```python
    model.fit(train, epochs=40, callbacks=[keras_cxr.callbacks.CollectCycles()])
    ```
    """

    def __init__(self):
        super().__init__()
        self._froze = False

    def on_train_begin(self, logs=None):
        if not gc.get_freeze_count():
            gc.collect()
            gc.freeze()
            self._froze = True

    def on_train_batch_end(self, batch, logs=None):
        gc.collect()

    def on_epoch_end(self, epoch, logs=None):
        gc.collect()
        if self._froze:
            gc.freeze()

    def on_train_end(self, logs=None):
        self.release()

    def release(self):
        """Unfreeze what this callback froze (also safe after a failed `fit`)."""
        if self._froze:
            gc.unfreeze()
            self._froze = False
