"""Tiny 16x16 models, array datasets and a recording callback shared by the callback tests."""

import math

import keras
import numpy as np
from sklearn.metrics import f1_score

C = 4
BS = 8


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(C, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inp, out)


class ArrayDataset(keras.utils.PyDataset):
    """Batches of (x, y[, w]); counts on_epoch_end calls."""

    def __init__(self, x, y=None, w=None, batch_size=BS):
        super().__init__()
        self.x, self.y, self.w, self.batch_size = x, y, w, batch_size
        self.epoch_ends = 0

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        if self.y is None:
            return (self.x[s],)
        if self.w is None:
            return self.x[s], self.y[s]
        return self.x[s], self.y[s], self.w[s]

    def on_epoch_end(self):
        self.epoch_ends += 1


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16, 16, 3)).astype(np.float32)
    ids = rng.integers(0, C, n)
    x[..., 0] += ids[:, None, None] * 0.5  # learnable signal
    return x, np.eye(C, dtype=np.float32)[ids]


def compile_model(model, lr=0.05, **opt_kwargs):
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9, **opt_kwargs), loss="categorical_crossentropy")
    return model


def weights_of(model, trainable_only=False):
    vs = model.trainable_variables if trainable_only else model.weights
    return [keras.ops.convert_to_numpy(v).copy() for v in vs]


def sk_macro(y, probs):
    return f1_score(np.asarray(y).argmax(-1), probs.argmax(-1), average="macro", zero_division=0)


class Recorder(keras.callbacks.Callback):
    """Records the LR of every batch, and weights/predictions at epoch ends."""

    def __init__(self, val=None):
        super().__init__()
        self.lrs, self.epoch_weights, self.epoch_trainable, self.epoch_probs, self.epoch_logs = [], {}, {}, {}, {}
        self.val = val
        self.iterations = None

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)
        self.lrs.append(float(keras.ops.convert_to_numpy(opt.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_weights[epoch] = weights_of(self.model)
        self.epoch_trainable[epoch] = weights_of(self.model, trainable_only=True)
        self.epoch_logs[epoch] = dict(logs or {})
        if self.val is not None:
            self.epoch_probs[epoch] = self.model.predict(self.val, verbose=0)
        self.iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

def expected_schedule(total, warm, peak, lo):
    out = []
    for s in range(total):
        if s < warm:
            out.append(peak * (s + 1) / warm)
        else:
            q = (s - warm) / (total - 1 - warm)
            out.append(lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * q)))
    return out
