"""`keras_cxr.accel.adam` gives Keras's Adam/AdamW updates."""

import keras
import numpy as np
import pytest
import torch

from tests.accel.helpers import both


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


def test_adam_plan_follows_tensors_replaced_under_a_variable(accelerated):
    """The cached fused-Adam plan is rebuilt when a load or relayout swaps a variable's tensor."""
    variable = keras.Variable(np.ones((3, 4), "float32"))
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.apply([torch.ones(3, 4)], [variable])
    np.testing.assert_allclose(variable.numpy(), 0.9, rtol=1e-6)
    variable._value = torch.nn.Parameter(torch.full((3, 4), 5.0))  # what `relayout_conv_kernels` does
    optimizer.apply([torch.ones(3, 4)], [variable])
    assert (variable.numpy() < 5.0).all()  # the step reached the new tensor, not the old one



@pytest.mark.parametrize("schedule", [False, True])
def test_adamw_weight_decay_inside_the_fused_kernel_gives_kerass_bits(accelerated, monkeypatch, schedule):
    """AdamW's decay folded into `_fused_adamw_` equals Keras's separate decay pass bit for bit,
    excluded variables included (they get no decay)."""
    from keras.src.backend.torch.optimizers import torch_optimizer

    from keras_cxr.accel import adam

    def run():
        rng = np.random.default_rng(1)
        variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=n)
                     for s, n in [((6, 5), "kernel"), ((5,), "bias"), ((3, 3, 2, 4), "conv")]]
        learning_rate = keras.optimizers.schedules.CosineDecay(3e-3, 40, warmup_target=7e-3, warmup_steps=5) \
            if schedule else 1.7e-3
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=0.13)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        for _ in range(12):
            grads = [torch.tensor(rng.normal(size=v.shape).astype("float32")) for v in variables]
            optimizer.apply(grads, variables)
        return [v.numpy() for v in variables]

    folded = run()
    assert adam._keras_weight_decay is not None and not adam._PENDING_DECAY
    # The reference: Keras's own decay pass, then the fused update without decay.
    monkeypatch.setattr(torch_optimizer.TorchOptimizer, "_apply_weight_decay", adam._keras_weight_decay)
    separate = run()
    for a, b in zip(folded, separate):
        np.testing.assert_array_equal(a, b)
    # The decay is really there: without it the weights differ.
    monkeypatch.setattr(torch_optimizer.TorchOptimizer, "_apply_weight_decay", lambda self, variables: None)
    undecayed = run()
    assert not np.array_equal(undecayed[0], folded[0])
    np.testing.assert_array_equal(undecayed[1], folded[1])  # the excluded bias
