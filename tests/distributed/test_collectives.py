"""Gradient averaging, synchronised batch norm and gathering across 2 gloo ranks, against one process."""

import numpy as np
import pytest

from tests.distributed.ranks import run_ranks

pytestmark = pytest.mark.slow  # starts processes


def _model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)  # a bias before BN has a zero gradient: Adam steps on noise
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, clipnorm=1.0), loss="categorical_crossentropy")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.0, (3, 32, 6, 6, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, (3, 32))]
    return x, y


def _train(context, sync):
    """Three steps of batch 32 in one process (context None) or 16 rows on each of 2 ranks."""
    import contextlib

    import keras
    import torch

    from keras_cxr.distributed.batch_norm import synchronized_batch_norm
    from keras_cxr.distributed.randomness import global_dropout_masks
    from keras_cxr.distributed.train_step import data_parallel

    model = data_parallel(_model(3), context)
    x, y = _data()
    rows = slice(None) if context is None else slice(16 * context.rank, 16 * (context.rank + 1))
    losses = []
    scope = synchronized_batch_norm(context) if sync else contextlib.nullcontext()
    with scope, global_dropout_masks(context):
        torch.manual_seed(7)
        for step in range(3):
            logs = model.train_on_batch(x[step][rows], y[step][rows], return_dict=True)
            losses.append(float(logs["loss"]))
    return losses, [keras.ops.convert_to_numpy(v) for v in model.weights]


def test_two_ranks_train_like_one_process_with_the_whole_batch():
    one_losses, one_weights = _train(None, sync=False)
    (loss0, w0), (loss1, w1) = run_ranks(_train, True)
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)  # the ranks hold one model
    np.testing.assert_allclose(loss0, one_losses, rtol=1e-5)
    assert loss0 == loss1
    for a, b in zip(w0, one_weights):  # weights, BN moving statistics, seed state
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_per_rank_batch_norm_differs_from_the_whole_batch():
    one_losses, one_weights = _train(None, sync=False)
    (loss0, w0), _ = run_ranks(_train, False)
    assert not np.allclose(loss0, one_losses, rtol=1e-4)  # the synchronised test above is a real test


def _gather_and_average(context):
    import torch

    part = np.arange(3 * (context.rank + 1)).reshape(-1, 1) + 100 * context.rank
    t = torch.full((2,), float(context.rank + 1))
    context.average_([t])
    return context.gather(part).ravel().tolist(), t.tolist(), context.broadcast(f"from {context.rank}")


def test_gather_keeps_rank_order_and_average_is_the_mean():
    results = run_ranks(_gather_and_average)
    for gathered, averaged, told in results:
        assert gathered == [0, 1, 2, 100, 101, 102, 103, 104, 105]
        assert averaged == [1.5, 1.5]
        assert told == "from 0"


class _Unpicklable(Exception):
    def __init__(self, message, handle):
        super().__init__(message)
        self.handle = handle

    def __reduce__(self):
        raise TypeError("cannot pickle")


def _on_main(context):
    from keras_cxr.config import ConfigError

    made = context.on_main(lambda: f"made by {context.rank}")
    outcomes = []
    for error in (ConfigError("Recipe.epochs: must be >= 1"), _Unpicklable("no pickle", object())):
        def fail(error=error):
            raise error
        try:
            context.on_main(fail)
        except Exception as e:  # noqa: BLE001 - compared below
            outcomes.append((type(e).__name__, str(e)))
    return made, outcomes


def test_rank_0_work_and_its_errors_reach_every_rank():
    results = run_ranks(_on_main)
    for made, outcomes in results:
        assert made == "made by 0"
        assert outcomes == [("ConfigError", "Recipe.epochs: must be >= 1"),
                            ("RuntimeError", "_Unpicklable: no pickle")]


def _rank_0_works_past_the_collective_timeout(context):
    import time

    started = time.monotonic()
    if context.is_main:
        time.sleep(4.0)  # twice the group's 2 s collective timeout
    context.wait_for_all()
    return time.monotonic() - started


def test_the_final_wait_outlasts_the_collective_timeout():
    waited = run_ranks(_rank_0_works_past_the_collective_timeout, timeout_s=2)
    assert waited[1] > 3.5, waited  # rank 1 waited for rank 0 instead of timing out after 2 s
