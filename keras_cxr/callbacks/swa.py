"""Stochastic Weight Averaging with BatchNormalization statistics recomputed."""

import warnings

import keras
import numpy as np

from keras_cxr.callbacks.macro_f1_checkpoint import MacroF1Checkpoint
from keras_cxr.callbacks.macro_f1_checkpoint import check_filepath
from keras_cxr.callbacks.macro_f1_checkpoint import evaluate_macro_f1
from keras_cxr.callbacks.warmup_cosine import set_lr
from keras_cxr.io import save_model_atomic
from keras_cxr.predict import iter_batches


def batch_norm_layers(model):
    """BatchNormalization layers of `model` (nested models included) that update in training mode."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def average_moving_statistics(layers, context):
    """Average the moving mean and variance of BatchNormalization `layers` over the ranks of `context`."""
    context.average_([v.value for layer in layers for v in (layer.moving_mean, layer.moving_variance)])


def update_bn(model, data, steps=None):
    """Recompute BatchNormalization moving statistics over `data`.

    The Keras counterpart of `torch.optim.swa_utils.update_bn`: every
    trainable BatchNormalization layer gets `moving_mean = 0`,
    `moving_variance = 1`, then the model runs forward in training mode
    (no gradient, no optimizer step) over the batches of `data`, with the
    layers' momentum set to `n / (n + 1)` before the `(n + 1)`-th batch. The
    moving statistics end as the plain average over batches of the batch
    mean and the batch (biased, as Keras computes it) variance. Each layer's
    momentum and the model's train/eval mode are restored afterwards.

    Frozen BatchNormalization layers (`trainable=False`) do not update in
    training mode and are left untouched. With a data-parallel `data` (a
    `CXRDataset` with a `shard`) each rank averages over its own batches,
    then the ranks' statistics are averaged (`shard.average_`). Other training-mode behaviour
    (Dropout, random augmentation layers) runs as during training.

    Args:
        model: a Keras model.
        data: a PyDataset (read by index; its `on_epoch_end` is not called,
            so the dataset's epoch is not advanced), an iterable of batches
            (`x`, `(x,)`, `(x, y)` or `(x, y, w)`; only `x` is used) or a
            NumPy input array.
        steps: use at most this many batches (default: all).

    Returns:
        The number of batches used (0 when the model has no BatchNormalization
        layer to update; `data` is then not read).
    """
    import torch

    layers = batch_norm_layers(model)
    if not layers:
        return 0
    if any(getattr(layer, "renorm", False) for layer in layers):
        warnings.warn("update_bn: BatchNormalization(renorm=True) statistics are not averaged exactly.", stacklevel=2)
    momenta = [layer.momentum for layer in layers]
    was_training = getattr(model, "training", False)
    n = 0
    try:
        for layer in layers:
            layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance))
        model.train()
        with torch.no_grad():
            for batch in iter_batches(data, steps=steps):
                x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
                for layer in layers:
                    layer.momentum = n / (n + 1.0)
                model(x, training=True)
                n += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        if not was_training:
            model.eval()
    if n == 0:
        raise ValueError("update_bn: bn_data produced no batches.")
    shard = getattr(data, "shard", None)
    if shard is not None:
        average_moving_statistics(layers, shard)
    return n


class SWA(keras.callbacks.Callback):
    """Stochastic Weight Averaging (SWA) from `start_epoch` to the end of training.

    - At the end of every epoch whose 0-based index is `>= start_epoch`
      (`start_epoch=35` averages the 36th epoch on, as `fit` counts epochs
      from 0 and prints them from 1), the model's trainable weights are
      added to a running equal-weight average (kept on the host in float64;
      `n_averaged` counts the epochs averaged).
    - With `swa_lr`, the learning rate is set to that constant before every
      batch of those epochs (from the beginning of epoch `start_epoch`). Put
      `SWA` after `WarmupCosine` in the callbacks list so that it overrides.
    - At train end (if at least one epoch was averaged): the averaged weights
      are loaded; BatchNormalization moving statistics are recomputed over
      `bn_data` with `update_bn` (cumulative average over batches, training
      mode, no gradient, no optimizer step, the dataset's epoch not
      advanced); the SWA model is scored by validation Macro-F1 on
      `validation_data` (or the checkpoint's, when only `checkpoint` is
      given) and saved atomically to `filepath` when set.
    - Selection, when a `MacroF1Checkpoint` is passed as `checkpoint`: if the
      SWA score is strictly higher than `checkpoint.best`, the SWA model is
      also saved to the checkpoint's file and `checkpoint.best`,
      `best_epoch` (the last epoch trained) and `best_source = "swa"` are
      updated, and the SWA weights stay in the model (`used = True`).
      Otherwise the weights the model had before SWA (what `fit` left:
      the last epoch's weights, or their EMA with `use_ema=True`) are
      restored in memory (`used = False`). Without a checkpoint, the SWA
      weights stay in the model (`used = True`).

    Put `SWA` after `MacroF1Checkpoint` and after `EarlyStopping` in the
    list, so that it runs last at train end (EarlyStopping's
    `restore_best_weights` would otherwise overwrite the SWA weights).
    Without `bn_data`, a model with BatchNormalization keeps the last
    epoch's statistics, which do not match averaged weights: a warning is
    issued.

    Attributes after training: `n_averaged`, `swa_score` (None when no
    validation data), `used`, `bn_batches` (batches used by `update_bn`).

    Args:
        start_epoch: first 0-based epoch index to average.
        swa_lr: constant learning rate from `start_epoch` on, or `None` to
            leave the learning rate to the optimizer / other callbacks.
        bn_data: training batches for `update_bn` (PyDataset or iterable).
        bn_steps: at most this many batches of `bn_data` (default: all).
        validation_data: `(x, y)` batches to score the SWA model by Macro-F1.
        filepath: save the SWA model here (`.keras`), whether selected or not.
        checkpoint: a `MacroF1Checkpoint` to compete with (see above).
        verbose: 1 prints what happens at train end.

    Example:

    ```python
    ckpt = MacroF1Checkpoint(val_ds, filepath="best.keras")
    swa = SWA(start_epoch=35, swa_lr=2e-5, bn_data=train_ds,
              filepath="swa.keras", checkpoint=ckpt)
    model.fit(train_ds, epochs=45,
              callbacks=[WarmupCosine(8e-5, warmup_epochs=6), ckpt, swa])
    print(swa.used, swa.swa_score, ckpt.best_source)
    ```
    """

    def __init__(
        self,
        start_epoch,
        swa_lr=None,
        bn_data=None,
        bn_steps=None,
        validation_data=None,
        filepath=None,
        checkpoint=None,
        verbose=1,
    ):
        super().__init__()
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"start_epoch must be a non-negative integer (0-based epoch index), got {start_epoch!r}")
        if swa_lr is not None and swa_lr <= 0:
            raise ValueError(f"swa_lr must be > 0 or None, got {swa_lr}")
        check_filepath(filepath)
        if checkpoint is not None and not isinstance(checkpoint, MacroF1Checkpoint):
            raise TypeError(f"checkpoint must be a MacroF1Checkpoint, got {type(checkpoint).__name__}")
        self.start_epoch = int(start_epoch)
        self.swa_lr = swa_lr
        self.bn_data = bn_data
        self.bn_steps = bn_steps
        self.validation_data = validation_data
        self.filepath = filepath
        self.checkpoint = checkpoint
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self._sums = None
        self._epoch = 0
        self._last_epoch = None
        self.n_averaged = 0
        self.swa_score = None
        self.used = False
        self.bn_batches = 0

    def _say(self, msg):
        if self.verbose:
            print(f"SWA: {msg}")

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.swa_lr is not None and self._epoch >= self.start_epoch:
            set_lr(self.model.optimizer, self.swa_lr)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if epoch < self.start_epoch:
            return
        values = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in self.model.trainable_variables]
        if not all(np.isfinite(v).all() for v in values):
            self._say(f"epoch {epoch + 1}: weights are not finite; not added to the average.")
            return
        if self._sums is None:
            self._sums = values
        else:
            for s, v in zip(self._sums, values):
                s += v
        self.n_averaged += 1

    def averaged_weights(self):
        """The current SWA average of the trainable weights (float64 arrays), or None."""
        if not self.n_averaged:
            return None
        return [s / self.n_averaged for s in self._sums]

    def on_train_end(self, logs=None):
        if not self.n_averaged:
            self._say(f"no epoch reached start_epoch={self.start_epoch} (0-based); SWA not applied.")
            return
        model = self.model
        before = [keras.ops.convert_to_numpy(v) for v in model.weights]
        if not all(np.isfinite(w).all() for w in before):
            self._say("the weights are not finite (training diverged); SWA not applied.")
            return
        for v, avg in zip(model.trainable_variables, self.averaged_weights()):
            v.assign(avg.astype(v.dtype))
        if self.bn_data is not None:
            self.bn_batches = update_bn(model, self.bn_data, steps=self.bn_steps)
        elif batch_norm_layers(model):
            warnings.warn(
                "SWA without bn_data: BatchNormalization statistics are the last epoch's, "
                "not recomputed for the averaged weights.",
                stacklevel=2,
            )
        val = self.validation_data
        if val is None and self.checkpoint is not None:
            val = self.checkpoint.validation_data
        if val is not None:
            self.swa_score = evaluate_macro_f1(model, val)
        if self.filepath is not None:
            save_model_atomic(model, self.filepath)
        msg = f"averaged {self.n_averaged} epochs, BN over {self.bn_batches} batches"
        if self.swa_score is not None:
            msg += f", val Macro-F1 {self.swa_score:.5f}"
        ckpt = self.checkpoint
        if ckpt is None:
            self.used = True
            self._say(msg + "; SWA weights kept.")
            return
        ckpt.set_model(model)
        if ckpt.is_improvement(self.swa_score):
            ckpt.record_best(self.swa_score, self._last_epoch, "swa")
            self.used = True
            saved = f" and saved to {ckpt.filepath}" if ckpt.filepath else ""
            self._say(msg + f"; better than the best epoch, SWA selected{saved}.")
        else:
            for v, value in zip(model.weights, before):
                v.assign(value)
            self.used = False
            best = "none" if ckpt.best is None else f"{ckpt.best:.5f}"
            self._say(msg + f"; not better than the best ({best}), pre-SWA weights restored.")
