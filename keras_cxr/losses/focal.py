"""Focal loss with label smoothing and per-class alpha ("improved focal")."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cxr")
class FocalLoss(keras.losses.Loss):
    """Focal loss on label-smoothed targets, with per-class alpha.

    The recipe's "improved focal" loss, written for soft targets so that it
    works unchanged with Mixup/CutMix labels. For one sample with target row
    `y` (non-negative, summing to 1) over `C` classes and predicted
    probabilities `p`:

    ```
    t_c     = (1 - eps) * y_c + eps / (C - 1) * (1 - y_c)   # smoothed target
    ce      = -sum_c t_c * log(p_c)
    p_t     = sum_c y_c * p_c                                # prob. of the true class
    alpha_t = sum_c y_c * alpha_c                            # alpha of the true class
    loss    = alpha_t * (1 - p_t) ** gamma * ce
    ```

    For a one-hot `y` this is: `1 - eps` on the true class and `eps / (C - 1)`
    on every other class; `p_t` and `alpha_t` are the true class's
    probability and alpha. Note `p_t` and `alpha_t` use the *unsmoothed*
    target. With `gamma=0`, `alpha=None` and `label_smoothing=0` the loss is
    plain categorical cross-entropy.

    With `from_logits=False` (the default: keras-cxr models output softmax
    probabilities) `p` is clipped to `[epsilon, 1]` before the log, with
    `epsilon = keras.config.epsilon()`; probabilities are not renormalised.
    With `from_logits=True`, `log(p)` is `log_softmax(logits)`. The loss is
    always computed in float32, whatever the input dtype (e.g. float16 under
    `mixed_float16`). Per-sample losses are then reduced by Keras (sample
    weights are honoured; `"sum_over_batch_size"` divides the weighted sum by
    the batch size).

    Args:
        alpha: `None` (all classes weight 1) or a list of `C` floats, one
            weight per class in column order.
        gamma: focusing parameter (>= 0). Defaults to 2.0.
        label_smoothing: `eps` in `[0, 1)`. Defaults to 0.0.
        from_logits: whether `y_pred` holds logits instead of probabilities.
            Defaults to `False`.
        reduction: Keras loss reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `"focal_loss"`.

    Example:

    ```python
    loss = keras_cxr.losses.FocalLoss(
        alpha=[1.0, 1.5, 2.0, 12.0], gamma=3.5, label_smoothing=0.12
    )
    model.compile(optimizer="adamw", loss=loss)
    ```
    """

    def __init__(
        self,
        alpha=None,
        gamma=2.0,
        label_smoothing=0.0,
        from_logits=False,
        reduction="sum_over_batch_size",
        name="focal_loss",
    ):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        if alpha is not None:
            alpha = [float(a) for a in alpha]
            if not alpha or any(a < 0 for a in alpha):
                raise ValueError(f"alpha must be None or a non-empty list of non-negative floats, got {alpha!r}")
        gamma = float(gamma)
        label_smoothing = float(label_smoothing)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.alpha = alpha
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        num_classes = y_pred.shape[-1]
        if y_true.shape[-1] != num_classes:
            raise ValueError(
                "FocalLoss expects one-hot or soft targets with the same last "
                f"dimension as y_pred; got y_true shape {tuple(y_true.shape)} and "
                f"y_pred shape {tuple(y_pred.shape)}."
            )
        if self.alpha is not None and len(self.alpha) != num_classes:
            raise ValueError(f"alpha has {len(self.alpha)} values but y_pred has {num_classes} classes.")

        if self.from_logits:
            log_p = ops.log_softmax(y_pred, axis=-1)
            p = ops.exp(log_p)
        else:
            p = ops.clip(y_pred, keras.config.epsilon(), 1.0)
            log_p = ops.log(p)

        eps = self.label_smoothing
        if eps > 0.0:
            off = eps / (num_classes - 1) if num_classes > 1 else 0.0
            target = (1.0 - eps) * y_true + off * (1.0 - y_true)
        else:
            target = y_true
        ce = -ops.sum(target * log_p, axis=-1)

        loss = ce
        if self.gamma != 0.0:
            p_t = ops.sum(y_true * p, axis=-1)
            # p_t can exceed 1 by rounding; keep the base non-negative.
            loss = loss * ops.power(ops.maximum(1.0 - p_t, 0.0), self.gamma)
        if self.alpha is not None:
            alpha = ops.convert_to_tensor(self.alpha, dtype="float32")
            alpha_t = ops.sum(y_true * alpha, axis=-1)
            loss = loss * alpha_t
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": None if self.alpha is None else list(self.alpha),
                "gamma": self.gamma,
                "label_smoothing": self.label_smoothing,
                "from_logits": self.from_logits,
            }
        )
        return config
