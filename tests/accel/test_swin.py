"""`keras_cxr.accel.swin` gives keras-hub's Swin results bit for bit."""

import keras
import numpy as np
import pytest
import torch

from keras_cxr import accel, models
from keras_cxr.accel import swin as fast_swin
from keras_cxr.accel.patches import PATCHES
from keras_cxr.accel.switch import switched_off
from keras_cxr.accel.versions import untested
from keras_cxr.models import swin


def swin_layers():
    """keras-hub's Swin layers module (imported here: keras_hub loads TensorFlow)."""
    from keras_hub.src.models.swin_transformer import swin_transformer_layers

    return swin_transformer_layers


@pytest.fixture
def tiny_swin_with_drop_path(monkeypatch):
    # Drop path on, so the stochastic-depth draws must line up too.
    monkeypatch.setitem(swin.ARCHS, "tiny_swin", {**swin.ARCHS["tiny_swin"], "drop_path": 0.3})


@pytest.fixture(autouse=True)
def accelerated_with_keras_hub():
    """Every test here runs with keras_hub's Swin module imported and the patches on."""
    if switched_off():
        pytest.skip("KERAS_CXR_ACCEL=0: acceleration is off for this run")
    outside = untested(next(p for p in PATCHES if p.name == "swin"))
    if outside:
        pytest.skip(f"the Swin patch is off here: {outside}")
    swin_layers()
    accel.enable()
    yield
    accel.disable()


def fast_and_keras_hub(fn):
    """`fn()` with `keras_cxr.accel.swin` installed, then with keras-hub's own calls."""
    assert accel.active("swin")
    fast = fn()
    fast_swin.uninstall()
    try:
        reference = fn()
    finally:
        fast_swin.install()
    return fast, reference


def run_both(model, x):
    """(fast, keras-hub) results of a training and an inference pass from the same start."""
    start = [v.numpy().copy() for v in model.non_trainable_variables]  # seed generator states

    def run():
        for variable, value in zip(model.non_trainable_variables, start):
            variable.assign(value)
        for w in model.trainable_variables:
            w.value.grad = None
        out = model(x, training=True)
        (out.float() * torch.arange(1.0, 5.0)).sum().backward()
        with torch.no_grad():
            inference = model(x, training=False)
        return ([out.detach().float().numpy(), inference.float().numpy()]
                + [w.value.grad.float().numpy().copy() for w in model.trainable_variables]
                + [v.numpy().copy() for v in model.non_trainable_variables])

    return fast_and_keras_hub(run)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_swin_trains_bit_identically_to_keras_hub(policy, tiny_swin_with_drop_path):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = models.build("tiny_swin", image_size=64, dropout=0.0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    x = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    fast, reference = run_both(model, x)
    assert len(fast) == len(reference) > 20
    for a, b in zip(fast, reference):
        np.testing.assert_array_equal(a, b)
    # The fast calls really ran: stage 2 (8x8 tokens, window 4) has a shifted block with a cached mask.
    blocks = [layer for layer in model._flatten_layers(recursive=True)
              if isinstance(layer, swin_layers().SwinTransformerBlock)]
    shifted = [b for b in blocks if b.shift_size > 0]
    assert shifted and all(any(k[0] == "mask" for k in fast_swin._CONSTANTS.get(b, {})) for b in shifted)
    mask = fast_swin._CONSTANTS[shifted[0]]["mask", torch.device("cpu")]
    assert mask.shape == (4, 16, 16) and set(mask.unique().tolist()) == {-100.0, 0.0}
    # Drop path is live: other seed states give other outputs.
    assert not np.array_equal(model(x, training=True).detach().float().numpy(), fast[0])


def test_block_outside_the_fast_case_uses_keras_hub_code():
    layers = swin_layers()
    # 6x6 tokens in windows of 4: keras-hub pads to a window multiple, which the fast call leaves to it.
    block = layers.SwinTransformerBlock(dim=8, input_resolution=(6, 6), num_heads=2, window_size=4, shift_size=2)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 36, 8)).astype("float32"))
    fast, reference = fast_and_keras_hub(lambda: block(x).detach().numpy())
    np.testing.assert_array_equal(fast, reference)
    assert block not in fast_swin._CONSTANTS  # no cached mask: keras-hub's call ran


def test_installed_once_keras_hub_is_imported_after_enable():
    accel.disable()
    accel.enable()
    assert accel.active("swin")  # keras_hub was imported: installed at once
    layers = swin_layers()
    assert layers.SwinTransformerBlock.call is fast_swin._block_call
    assert layers.WindowAttention.call is fast_swin._attention_call
    fast_swin.uninstall()
    try:
        assert layers.SwinTransformerBlock.call is not fast_swin._block_call
    finally:
        fast_swin.install()


def test_drop_path_scales_and_masks_like_keras_hub_to_the_bit():
    layer = swin_layers().DropPath(0.5, seed=3)
    assert type(layer).call is fast_swin._drop_path_call
    x0 = np.random.default_rng(1).normal(size=(64, 5, 4)).astype("float32")
    x0[0, 0, :2] = [np.inf, np.nan]

    def run():
        layer.seed_generator.state.assign(np.array([3, 0], dtype=layer.seed_generator.state.dtype))
        x = torch.tensor(x0, requires_grad=True)
        y = layer(x, training=True)
        y.backward(torch.from_numpy(np.random.default_rng(2).normal(size=x0.shape).astype("float32")))
        return y.detach().numpy(), x.grad.numpy()

    fast, reference = fast_and_keras_hub(run)
    dropped = (fast[0] == 0).all(axis=(1, 2))
    assert 10 < dropped.sum() < 54  # about half the samples dropped
    for a, b in zip(fast, reference):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))  # signed zeros too
