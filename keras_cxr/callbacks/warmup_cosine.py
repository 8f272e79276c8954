"""Per-step linear warmup followed by cosine decay."""

import math
import warnings

import keras


def base_optimizer(optimizer):
    """The optimizer that owns the learning rate.

    Under `mixed_float16`, `compile()` wraps the optimizer in a
    `LossScaleOptimizer`; its learning rate lives on `.inner_optimizer`.
    """
    return getattr(optimizer, "inner_optimizer", optimizer)


def ema_optimizer(model):
    """The optimizer of `model` that keeps a weight EMA (`use_ema=True`; the inner one under loss scaling), else None."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    opt = base_optimizer(optimizer)
    return opt if getattr(opt, "use_ema", False) else None


def get_lr(optimizer):
    """Current learning rate of `optimizer` (or its inner optimizer) as a float."""
    return float(keras.ops.convert_to_numpy(base_optimizer(optimizer).learning_rate))


def set_lr(optimizer, value):
    """Set the learning rate of `optimizer` (the inner one under loss scaling)."""
    opt = base_optimizer(optimizer)
    if isinstance(getattr(opt, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(
            "The optimizer was built with a LearningRateSchedule; a learning-rate "
            "callback needs a float learning_rate, e.g. AdamW(learning_rate=1e-4)."
        )
    opt.learning_rate = float(value)


def warmup_cosine_lr(step, total_steps, warmup_steps, peak_lr, min_lr):
    """Learning rate of the (0-based) optimizer step `step`.

    - Warmup, `step < warmup_steps`: `peak_lr * (step + 1) / warmup_steps`,
      linear from `peak_lr / warmup_steps` (~0) up to `peak_lr` at the last
      warmup step.
    - Cosine, `step >= warmup_steps`:
      `min_lr + (peak_lr - min_lr) * (1 + cos(pi * q)) / 2` with
      `q = min(1, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))`,
      so the first cosine step runs at `peak_lr` and the last step of
      training (`total_steps - 1`) at exactly `min_lr`; later steps stay at
      `min_lr`.

    Args:
        step: global step index, 0-based.
        total_steps: number of steps in the whole training run.
        warmup_steps: number of warmup steps (0 for none).
        peak_lr: learning rate at the end of warmup.
        min_lr: floor reached at the last step.

    Returns:
        The learning rate, a Python float.
    """
    step = int(step)
    if warmup_steps > 0 and step < warmup_steps:
        return float(peak_lr) * (step + 1) / warmup_steps
    span = max(1, total_steps - 1 - warmup_steps)
    q = min(1.0, max(0.0, (step - warmup_steps) / span))
    return float(min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * q)))


class WarmupCosine(keras.callbacks.Callback):
    """Per-step linear warmup then cosine decay to `min_lr`.

    Before every training batch this callback sets the optimizer's learning
    rate to `warmup_cosine_lr(step, total_steps, warmup_steps, peak_lr,
    min_lr)`, where `step = epoch * steps_per_epoch + batch` is the global,
    0-based step (computed from the epoch index, so resuming with
    `fit(initial_epoch=k)` continues the schedule where it stopped),
    `total_steps = total_epochs * steps_per_epoch` and
    `warmup_steps = round(warmup_epochs * steps_per_epoch)`. The LR is
    changed every step, never only per epoch.

    Under `mixed_float16` the optimizer is a `LossScaleOptimizer`; the rate
    is set on its `.inner_optimizer`. The optimizer must have been built with
    a float learning rate (not a `LearningRateSchedule`). The LR used by the
    epoch's last batch is written to the epoch logs as `"lr"` (and so to
    `History` / `CSVLogger`).

    To hold a constant SWA learning rate at the end of training, put `SWA`
    after this callback in the list: it overrides the rate from its start
    epoch.

    Args:
        peak_lr: learning rate reached at the end of warmup.
        warmup_epochs: warmup length in epochs (may be fractional). Defaults
            to 0 (no warmup: the first step runs at `peak_lr`).
        min_lr: floor reached at the last step of training. Defaults to 1e-6.
        total_epochs: length of the schedule in epochs. Defaults to the
            `epochs` argument of `fit`.
        steps_per_epoch: optimizer steps per epoch. Defaults to the number of
            batches `fit` reports (required when that is unknown).
        verbose: 1 prints the LR at each epoch start; 0 (default) is silent.

    Example:

    ```python
    model.compile(optimizer=keras.optimizers.AdamW(8e-5), loss=FocalLoss())
    model.fit(
        train_ds,
        epochs=45,
        callbacks=[WarmupCosine(peak_lr=8e-5, warmup_epochs=6, min_lr=1e-6)],
    )
    ```
    """

    def __init__(self, peak_lr, warmup_epochs=0.0, min_lr=1e-6, total_epochs=None, steps_per_epoch=None, verbose=0):
        super().__init__()
        if peak_lr <= 0:
            raise ValueError(f"peak_lr must be > 0, got {peak_lr}")
        if min_lr < 0 or min_lr > peak_lr:
            raise ValueError(f"min_lr must be in [0, peak_lr], got min_lr={min_lr}, peak_lr={peak_lr}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.peak_lr = float(peak_lr)
        self.warmup_epochs = float(warmup_epochs)
        self.min_lr = float(min_lr)
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.verbose = verbose
        self._epoch = 0
        self._spe = None
        self.total_steps = None
        self.warmup_steps = None

    def on_train_begin(self, logs=None):
        params = self.params or {}
        spe = self.steps_per_epoch or params.get("steps")
        if not spe:
            raise ValueError(
                "WarmupCosine needs the number of steps per epoch: fit() does not "
                "know it for this dataset, so pass steps_per_epoch=..."
            )
        epochs = self.total_epochs or params.get("epochs")
        if not epochs:
            raise ValueError("WarmupCosine needs total_epochs (fit() did not report epochs).")
        self._spe = int(spe)
        self.total_steps = int(epochs) * self._spe
        self.warmup_steps = int(round(self.warmup_epochs * self._spe))
        if self.warmup_steps > self.total_steps:
            # e.g. a GPU recipe run for one epoch to check it starts: train, on the first part of the ramp
            warnings.warn(
                f"WarmupCosine: warmup ({self.warmup_epochs} epochs = {self.warmup_steps} steps) is longer "
                f"than training ({epochs} epochs = {self.total_steps} steps); the learning rate rises for the "
                f"whole run and ends at {self.lr_at(self.total_steps - 1):.3e}, below its peak {self.peak_lr:.3e}.",
                stacklevel=2,
            )

    def lr_at(self, step):
        """Scheduled learning rate of global step `step` (after `on_train_begin`)."""
        return warmup_cosine_lr(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self.verbose:
            lr = self.lr_at(epoch * self._spe)
            print(f"\nEpoch {epoch + 1}: WarmupCosine learning rate {lr:.3e}.")

    def on_train_batch_begin(self, batch, logs=None):
        set_lr(self.model.optimizer, self.lr_at(self._epoch * self._spe + batch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = get_lr(self.model.optimizer)
