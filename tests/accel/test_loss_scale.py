"""`keras_cxr.accel.loss_scale` gives Keras's loss-scale optimizer steps."""

import keras
import numpy as np
import torch

from tests.accel.helpers import both


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

