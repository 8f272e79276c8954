"""Validation Macro-F1 at every epoch end, checkpointing the best model."""

import contextlib
import math

import keras
import numpy as np

from keras_cxr.callbacks.warmup_cosine import ema_optimizer
from keras_cxr.io import save_model_atomic
from keras_cxr.metrics.macro_f1 import macro_f1
from keras_cxr.predict import predict_with_labels


def _ema_pairs(model):
    """`(model variable, EMA variable)` pairs when the optimizer keeps an EMA, else `[]`.

    Keras optimizers built with `use_ema=True` keep the moving averages in
    `_model_variables_moving_average`, aligned with `_trainable_variables`
    (the same lists `keras.callbacks.SwapEMAWeights` swaps). Under
    `mixed_float16` they live on the `LossScaleOptimizer`'s inner optimizer.
    """
    opt = ema_optimizer(model)
    if opt is None:
        return []
    averages = getattr(opt, "_model_variables_moving_average", None)
    if not averages:
        return []
    return [(v, a) for v, a in zip(opt._trainable_variables, averages) if a is not None]


@contextlib.contextmanager
def ema_weights(model):
    """Temporarily load the optimizer's EMA weights into the model.

    A no-op when the optimizer has no EMA. The model's own values are copied
    out and written back afterwards; the optimizer's EMA variables are only
    read, so its state (and what `model.save` stores of it) stays intact.

    Yields:
        `True` when EMA weights were loaded, else `False`.
    """
    pairs = _ema_pairs(model)
    if not pairs:
        yield False
        return
    backup = [keras.ops.convert_to_numpy(v) for v, _ in pairs]
    try:
        for v, a in pairs:
            v.assign(a)
        yield True
    finally:
        for (v, _), value in zip(pairs, backup):
            v.assign(value)


def evaluate_macro_f1(model, validation_data, num_classes=None):
    """Macro-F1 (sklearn rule) of `model` on `validation_data`, from argmax.

    NaN when the model's probabilities are not finite (diverged weights):
    such a model is never an improvement, so it is never checkpointed.
    """
    probs, y_true = predict_with_labels(model, validation_data)
    if y_true is None:
        raise ValueError("validation_data must yield (x, y) batches with labels.")
    if not np.isfinite(probs).all():
        return float("nan")
    num_classes = num_classes or probs.shape[-1]
    return macro_f1(y_true, probs.argmax(axis=-1), num_classes)


def check_filepath(filepath):
    """Raise ValueError unless a callback's `filepath` is None or ends in `.keras`."""
    if filepath is not None and not str(filepath).endswith(".keras"):
        raise ValueError(f"filepath must end in '.keras', got {filepath!r}")


class MacroF1Checkpoint(keras.callbacks.Callback):
    """Computes validation Macro-F1 each epoch and saves the best model.

    At every epoch end the whole `validation_data` is predicted (in order,
    inference mode, no gradient; see `keras_cxr.predict`), Macro-F1 is
    computed exactly like `sklearn.metrics.f1_score(average="macro")` on the
    argmax of labels and predictions, and the score is written into the
    epoch logs under `monitor_name`. `History`, `CSVLogger` and callbacks
    placed *after* this one in the list see it, so
    `EarlyStopping(monitor="val_macro_f1", mode="max")` must come after
    `MacroF1Checkpoint`. If `fit` also computes a compiled `MacroF1` metric
    on its own `validation_data`, this callback's value replaces it.

    When the score is strictly greater than the best so far, the model is
    saved atomically to `filepath` (a `.keras` file) and `best`,
    `best_epoch` (0-based epoch index) and `best_source = "epoch"` are
    updated. `best` starts at `None` and is kept across `fit` calls with the
    same callback. `scores` maps every evaluated epoch index to its score.

    Optimizer EMA: with `use_ema=True` the score is computed on, and the
    checkpoint saved with, the optimizer's EMA weights (loaded into the model
    for the evaluation, then the training weights are put back). This
    matches what `fit` leaves in the model at the end of training, where
    Keras replaces the weights by their EMA (`finalize_variable_values`).
    BatchNormalization moving statistics are not part of the EMA and are
    used as they are.

    Args:
        validation_data: a PyDataset or iterable of `(x, y)` /
            `(x, y, sample_weight)` batches with one-hot, soft or integer
            labels. Sample weights are ignored (the competition metric is
            unweighted).
        filepath: where to save the best model (`.keras`); `None` only tracks
            the score.
        monitor_name: log key. Defaults to `"val_macro_f1"`.
        verbose: 1 prints the score and saves; 0 is silent.

    Example:

    ```python
    ckpt = MacroF1Checkpoint(val_ds, filepath="runs/exp/best.keras")
    stop = keras.callbacks.EarlyStopping(
        monitor="val_macro_f1", mode="max", patience=12
    )
    model.fit(train_ds, epochs=45, callbacks=[ckpt, stop])  # ckpt first
    print(ckpt.best, ckpt.best_epoch)
    ```
    """

    def __init__(self, validation_data, filepath=None, monitor_name="val_macro_f1", verbose=1):
        super().__init__()
        check_filepath(filepath)
        self.validation_data = validation_data
        self.filepath = filepath
        self.monitor_name = monitor_name
        self.verbose = verbose
        self.best = None
        self.best_epoch = None
        self.best_source = None
        self.scores = {}

    def is_improvement(self, score):
        """Whether `score` is strictly better than `best` (a NaN never is)."""
        if score is None or math.isnan(score):
            return False
        return self.best is None or score > self.best

    def record_best(self, score, epoch, source):
        """Make `score` the best; save the model in memory to `filepath` if set."""
        self.best = float(score)
        self.best_epoch = epoch
        self.best_source = source
        if self.filepath is not None:
            save_model_atomic(self.model, self.filepath)

    def on_epoch_end(self, epoch, logs=None):
        with ema_weights(self.model) as using_ema:
            score = evaluate_macro_f1(self.model, self.validation_data)
            self.scores[epoch] = score
            improved = self.is_improvement(score)
            previous = self.best
            if improved:
                self.record_best(score, epoch, "epoch")
        if logs is not None:
            logs[self.monitor_name] = score
        if self.verbose:
            where = f", saved to {self.filepath}" if improved and self.filepath else ""
            tag = " (EMA weights)" if using_ema else ""
            if improved:
                prev = "none" if previous is None else f"{previous:.5f}"
                msg = f"{self.monitor_name} improved from {prev} to {score:.5f}{tag}{where}"
            elif self.best is None:
                msg = f"{self.monitor_name} = {score}{tag}"
            else:
                msg = f"{self.monitor_name} = {score:.5f}{tag}, best {self.best:.5f} at epoch {self.best_epoch + 1}"
            print(f"\nEpoch {epoch + 1}: {msg}")

