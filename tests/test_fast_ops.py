"""Fast conv / batch norm kernels and traced inference give Keras's own results."""

import gc
import weakref

import keras
import numpy as np
import pytest
import torch

from keras_cxr import fast_graph, fast_ops, models
from keras_cxr.predict import predict_probs
from keras_cxr.seeding import set_seed


@pytest.fixture
def keras_ops():
    """Run the block with Keras's own implementations, then restore the fast ones."""
    fast_ops.uninstall()
    yield
    fast_ops.install()


def both(fn):
    """`fn()` with Keras's kernels and with the fast ones."""
    assert fast_ops.installed()
    fast = fn()
    fast_ops.uninstall()
    try:
        reference = fn()
    finally:
        fast_ops.install()
    return reference, fast


def test_installed_on_import():
    assert fast_ops.installed()
    from keras.src.backend.torch import nn as torch_nn

    assert torch_nn.conv is fast_ops._conv
    assert keras.layers.BatchNormalization.call is fast_ops._batch_norm_call
    assert keras.layers.Dense.call is fast_ops._dense_call


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("shape, kwargs", [((5, 6), {}), ((2, 7, 6), {"activation": "gelu"}),
                                            ((5, 6), {"use_bias": False}), ((3, 6), {"lora": 2})])
def test_dense_matches_keras_forward_and_backward(policy, shape, kwargs):
    keras.mixed_precision.set_dtype_policy(policy)
    kwargs = dict(kwargs)
    lora = kwargs.pop("lora", None)
    x0 = np.random.default_rng(3).normal(size=shape).astype("float32")

    def run():
        set_seed(0)
        dense = keras.layers.Dense(4, bias_initializer="glorot_uniform", **kwargs)
        dense.build(shape)
        if lora:
            dense.enable_lora(lora, b_initializer="ones")
        x = torch.tensor(x0, requires_grad=True)
        y = dense(x)
        (y.float() * torch.linspace(-1, 1, 4)).square().sum().backward()
        return y.detach().float().numpy(), x.grad.numpy(), [v.value.grad.numpy() for v in dense.trainable_variables]

    reference, fast = both(run)
    atol = 1e-2 if policy == "mixed_float16" else 1e-5
    np.testing.assert_allclose(fast[0], reference[0], atol=atol, rtol=1e-3)
    np.testing.assert_allclose(fast[1], reference[1], atol=atol, rtol=1e-3)
    for a, b in zip(fast[2], reference[2]):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-3)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: keras.layers.Conv2D(8, 3, padding="same"),
        lambda: keras.layers.Conv2D(8, 3, strides=2, padding="same"),
        lambda: keras.layers.Conv2D(8, 5, strides=2, padding="valid", use_bias=False),
        lambda: keras.layers.Conv2D(8, 1),
        lambda: keras.layers.Conv2D(8, 3, dilation_rate=2, padding="same"),
        lambda: keras.layers.Conv2D(8, 3, groups=2, padding="same"),
        lambda: keras.layers.DepthwiseConv2D(3, strides=2, padding="same"),
        lambda: keras.layers.SeparableConv2D(8, 3, padding="same"),
        lambda: keras.layers.Conv1D(8, 3, padding="same"),
    ],
)
def test_convolutions_match_keras_forward_and_backward(layer):
    rank = 3 if "Conv1D" in repr(layer()) else 4
    shape = (2, 9, 4) if rank == 3 else (2, 9, 11, 4)
    x0 = np.random.default_rng(0).normal(size=shape).astype("float32")

    def run():
        set_seed(0)
        conv = layer()
        x = torch.tensor(x0, requires_grad=True)
        y = conv(x)
        (y * torch.arange(y.numel()).reshape(y.shape).float().sin()).sum().backward()
        return y.detach().numpy(), x.grad.numpy(), [v.value.grad.numpy() for v in conv.trainable_variables]

    reference, fast = both(run)
    np.testing.assert_allclose(fast[0], reference[0], atol=1e-5)
    np.testing.assert_allclose(fast[1], reference[1], atol=1e-5)
    for a, b in zip(fast[2], reference[2]):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_batch_norm_matches_keras_in_training_and_inference(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    x0 = np.random.default_rng(1).normal(2.0, 3.0, size=(4, 5, 6, 8)).astype("float32")

    def run():
        bn = keras.layers.BatchNormalization(momentum=0.9)
        bn.build(x0.shape)
        bn.gamma.assign(np.linspace(0.5, 1.5, 8))
        bn.beta.assign(np.linspace(-1, 1, 8))
        x = torch.tensor(x0, requires_grad=True)
        y = bn(x, training=True)
        (y.float() * torch.linspace(-1, 1, 8)).square().sum().backward()
        inference = bn(torch.tensor(x0), training=False)
        return (y.detach().float().numpy(), x.grad.numpy(), bn.gamma.value.grad.numpy(), bn.beta.value.grad.numpy(),
                bn.moving_mean.numpy(), bn.moving_variance.numpy(), inference.detach().float().numpy(), y.dtype)

    reference, fast = both(run)
    atol = 1e-2 if policy == "mixed_float16" else 1e-5
    for a, b in zip(fast[:7], reference[:7]):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-3)
    assert fast[7] == reference[7]
    # The moving statistics moved by (1 - momentum) toward the batch's biased moments.
    np.testing.assert_allclose(fast[4], 0.1 * x0.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(fast[5], 0.9 + 0.1 * x0.var(axis=(0, 1, 2)), rtol=1e-4)


def test_batch_norm_with_a_mask_or_renorm_uses_keras_code():
    bn = keras.layers.BatchNormalization(renorm=True)
    x = torch.randn(2, 3, 4, 5)
    assert not fast_ops._fast_batch_norm_applies(bn, x, None)
    assert not fast_ops._fast_batch_norm_applies(keras.layers.BatchNormalization(), x, torch.ones(2, 3, 4))
    assert not fast_ops._fast_batch_norm_applies(keras.layers.BatchNormalization(axis=1), x, None)
    assert fast_ops._fast_batch_norm_applies(keras.layers.BatchNormalization(), x, None)


@pytest.mark.parametrize("name, size", [("tiny_effv2", 64), ("tiny_effv2_rw", 64), ("tiny_swin", 64),
                                        ("tiny_dinov2", 56), ("tiny_convnext", 64), ("cxr_resnet", 64)])
def test_every_family_trains_and_predicts_like_keras(name, size):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    fresh = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 6)]

    def run():
        set_seed(0)
        model = models.build(name, image_size=size, dropout=0.0)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy")
        before = predict_probs(model, x, batch_size=3)
        for _ in range(3):
            model.train_on_batch(x, y)
        # The trace made on `x`'s batches must be right on other pixels too (and a new shape).
        return before, predict_probs(model, x, batch_size=3), predict_probs(model, fresh, batch_size=3), model

    reference, fast = both(run)
    np.testing.assert_allclose(fast[0], reference[0], atol=1e-6)
    # After three AdamW steps float32 rounding differences have grown; with one
    # CPU thread (another oneDNN algorithm) up to 4e-4 on cxr_resnet.
    np.testing.assert_allclose(fast[1], reference[1], atol=1e-3)
    np.testing.assert_allclose(fast[2], reference[2], atol=1e-3)
    model = fast[3]
    eager = model(torch.from_numpy(fresh), training=False).detach().numpy()
    np.testing.assert_allclose(fast[2], eager, atol=1e-6)
    assert any(t is not None for t in fast_ops._TRACES[model].values())  # really traced


def test_models_that_are_not_keras_cxrs_run_eagerly():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    predict_probs(model, np.ones((4, 8), "float32"))
    assert model not in fast_ops._TRACES


def test_traces_do_not_keep_models_alive():
    model = models.build("cxr_resnet", image_size=32)
    predict_probs(model, np.zeros((2, 32, 32, 3), np.uint8))
    assert fast_ops._TRACES[model]
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_disabled_by_environment(monkeypatch, keras_ops):
    monkeypatch.setenv("KERAS_CXR_FAST_OPS", "0")
    assert not fast_ops.enabled()
    fast_ops.install()
    assert not fast_ops.installed()
    monkeypatch.setenv("KERAS_CXR_FAST_OPS", "1")


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.05),
    lambda: keras.optimizers.Adam(3e-3, beta_1=0.8, epsilon=1e-4),
    lambda: keras.optimizers.Adam(1e-2, amsgrad=True),  # Keras's own update
])
def test_adam_updates_match_keras(optimizer):
    def run():
        rng = np.random.default_rng(0)
        variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(5, 7), (3,), (2, 2, 4)]]
        opt = optimizer()
        for step in range(20):
            # gradients from 1 down to 1e-5, so epsilon's placement matters
            grads = [torch.tensor(rng.normal(size=v.shape).astype("float32") * 10.0 ** -(step % 6)) for v in variables]
            opt.apply(grads, variables)
        return [v.numpy() for v in variables]

    reference, fast = both(run)
    for a, b in zip(fast, reference):
        np.testing.assert_allclose(a, b, atol=2e-6)
    assert not np.allclose(fast[0], np.random.default_rng(0).normal(size=(5, 7)))  # the weights moved


def test_adam_plan_follows_tensors_replaced_under_a_variable():
    """The cached fused-Adam plan is rebuilt when a load or relayout swaps a variable's tensor."""
    variable = keras.Variable(np.ones((3, 4), "float32"))
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.apply([torch.ones(3, 4)], [variable])
    np.testing.assert_allclose(variable.numpy(), 0.9, rtol=1e-6)
    variable._value = torch.nn.Parameter(torch.full((3, 4), 5.0))  # what `relayout_conv_kernels` does
    optimizer.apply([torch.ones(3, 4)], [variable])
    assert (variable.numpy() < 5.0).all()  # the step reached the new tensor, not the old one


FAMILIES = [("tiny_effv2", 64), ("tiny_effv2_rw", 64), ("tiny_swin", 64), ("tiny_dinov2", 56),
            ("tiny_convnext", 64), ("cxr_resnet", 64)]


@pytest.mark.parametrize("name, size", FAMILIES)
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_graph_runner_gives_keras_outputs_gradients_and_updates(name, size, policy):
    """The fast graph walk is bit-identical to Keras's `Layer.__call__` path, dropout included."""
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = models.build(name, image_size=size, dropout=0.4)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, size, size, 3), dtype=np.uint8))
    start = [v.numpy().copy() for v in model.non_trainable_variables]  # moving statistics, dropout seeds

    def run(training):
        for variable, value in zip(model.non_trainable_variables, start):
            variable.assign(value)
        torch.manual_seed(0)  # unseeded Dropout draws from torch's global generator
        for w in model.trainable_variables:
            w.value.grad = None
        out = model(x, training=training)
        out.float().square().sum().backward()
        return (out.detach().float().numpy(), [w.value.grad.numpy().copy() for w in model.trainable_variables],
                [v.numpy().copy() for v in model.non_trainable_variables])

    for training in (False, True):
        fast = run(training)
        fast_graph.uninstall()  # Keras's Layer.__call__ path, the same kernels
        try:
            reference = run(training)
        finally:
            fast_graph.install()
        np.testing.assert_array_equal(fast[0], reference[0])
        for a, b in zip(fast[1] + fast[2], reference[1] + reference[2]):
            np.testing.assert_array_equal(a, b)
    assert fast_graph._PLANS[model] is not None  # the fast walk really ran
    # Dropout is live in training: another generator state gives other outputs.
    torch.manual_seed(1)
    assert not np.array_equal(model(x, training=True).detach().float().numpy(), fast[0])


def test_graph_runner_leaves_other_models_to_keras():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model(np.ones((2, 8), "float32"))
    assert fast_graph._PLANS[model] is None
    # A keras-cxr model nested in a user's model is still walked fast, and the user's model builds.
    inner = models.build("cxr_resnet", image_size=32)
    images = keras.Input((32, 32, 3))
    outer = keras.Model(images, keras.layers.Dense(2)(inner(images)))
    out = outer(np.zeros((2, 32, 32, 3), "uint8"))
    assert tuple(out.shape) == (2, 2) and fast_graph._PLANS[inner] is not None


def test_loss_scale_optimizer_matches_keras():
    """Finite check + unscale as two multi-tensor passes: same weights, scale and counter as Keras."""
    def run():
        rng = np.random.default_rng(1)
        variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(4, 3), (3,), (2, 5)]]
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e-2, momentum=0.9), dynamic_growth_steps=3)
        history = []
        for step in range(12):
            grads = [torch.tensor(rng.normal(size=v.shape).astype("float32") * 2.0 ** 15) for v in variables]
            if step in (4, 9):
                grads[1][0] = float("inf") if step == 4 else float("nan")  # skipped, scale halves
            opt.apply(grads, variables)
            history.append((float(opt.dynamic_scale.numpy()), int(opt.step_counter.numpy())))
        return [v.numpy() for v in variables], history

    reference, fast = both(run)
    assert fast[1] == reference[1]
    assert [s for s, _ in fast[1]][3:6] == [65536.0, 32768.0, 32768.0]  # grew after 3 finite steps, then halved
    for a, b in zip(fast[0], reference[0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["cxr_resnet", "tiny_effv2"])
def test_conv_kernels_in_torch_order_train_exactly_like_keras_order(name, monkeypatch):
    """Kernels stored (out, in, kh, kw) behind Keras's shape: same losses, weights and optimizer state."""
    def train(relayout):
        if not relayout:
            monkeypatch.setattr(fast_ops, "relayout_conv_kernels", lambda model: 0)
        set_seed(0)
        model = models.build(name, image_size=64, dropout=0.0)
        monkeypatch.undo()
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05), loss="categorical_crossentropy")
        rng = np.random.default_rng(2)
        x = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
        y = np.eye(4, dtype="float32")[rng.integers(0, 4, 6)]
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        return model, losses, [v.numpy() for v in model.variables + model.optimizer.variables]

    plain, relaid = train(False), train(True)
    kernels = [layer.kernel for layer in relaid[0]._flatten_layers(recursive=True)
               if isinstance(layer, keras.layers.Conv2D)]
    assert kernels and all(k.value.permute(3, 2, 0, 1).is_contiguous() for k in kernels)
    assert all(v.value.is_contiguous() for v in plain[0].trainable_variables)
    assert relaid[1] == plain[1]
    for a, b in zip(relaid[2], plain[2]):
        np.testing.assert_array_equal(a, b)
    # The optimizer's moments follow their kernel's layout (one fused pass over all four tensors).
    optimizer = relaid[0].optimizer
    for k in kernels:
        assert optimizer._momentums[optimizer._get_variable_index(k)].value.stride() == k.value.stride()


def test_symbolic_check_agrees_with_keras():
    from keras.src.ops import numpy as ops_numpy

    assert ops_numpy.any_symbolic_tensors is fast_graph._any_symbolic_tensors
    symbolic = keras.KerasTensor((2, 3))
    tensor = torch.ones(2)
    cases = [((tensor, 3, None), None), ((tensor, symbolic), None), (([tensor, [symbolic]],), None),
             ((tensor,), {"axis": 1}), ((tensor,), {"other": symbolic}), (({"a": (1, symbolic)},), None),
             ((np.ones(2), torch.nn.Parameter(tensor)), None), (None, None), ((), {"x": [tensor, 2.0]}),
             ((keras.Variable(np.ones(2)), (1, -1)), None), (((1, symbolic),), None), (([2, (symbolic,)],), None)]
    answers = [fast_graph._any_symbolic_tensors(args, kwargs) for args, kwargs in cases]
    assert answers == [fast_graph._keras_any_symbolic_tensors(args, kwargs) for args, kwargs in cases]
    assert answers == [False, True, True, False, True, True, False, False, False, False, True, True]


def test_moving_statistics_updates_are_batched_per_model_call(monkeypatch):
    """All batch norms' moving-statistics updates of one training call land as multi-tensor ops at its end."""
    model = models.build("tiny_effv2", image_size=64, dropout=0.0)
    norms = [layer for layer in model._flatten_layers(recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]
    calls = []
    foreach_mul_ = torch._foreach_mul_
    monkeypatch.setattr(torch, "_foreach_mul_", lambda tensors, scalar: (calls.append(len(tensors)),
                                                                          foreach_mul_(tensors, scalar)))
    before = norms[0].moving_mean.numpy().copy()
    model(torch.zeros(2, 64, 64, 3, dtype=torch.uint8) + 100, training=True)
    assert calls == [2 * len(norms)]  # one pass over every moving mean and variance
    assert not np.array_equal(norms[0].moving_mean.numpy(), before)


def test_a_batch_norm_deferred_twice_updates_in_order():
    statistic = torch.tensor([1.0, 2.0])
    expected = statistic.clone()
    for batch in (torch.tensor([3.0, 5.0]), torch.tensor([-1.0, 0.5])):
        expected = expected * 0.9 + batch * (1.0 - 0.9)
        fast_ops._defer_moving_update(statistic, batch, 0.9)
    fast_ops._apply_moving_updates()
    torch.testing.assert_close(statistic, expected, rtol=0, atol=0)
