"""`keras_cxr.accel.symbolic` answers Keras's symbolic-argument check as Keras does."""

import keras
import numpy as np
import torch

from keras_cxr.accel import symbolic


def test_symbolic_check_agrees_with_keras(accelerated):
    from keras.src.ops import numpy as ops_numpy

    assert ops_numpy.any_symbolic_tensors is symbolic.any_symbolic_tensors
    keras_tensor = keras.KerasTensor((2, 3))
    tensor = torch.ones(2)
    cases = [((tensor, 3, None), None), ((tensor, keras_tensor), None), (([tensor, [keras_tensor]],), None),
             ((tensor,), {"axis": 1}), ((tensor,), {"other": keras_tensor}), (({"a": (1, keras_tensor)},), None),
             ((np.ones(2), torch.nn.Parameter(tensor)), None), (None, None), ((), {"x": [tensor, 2.0]}),
             ((keras.Variable(np.ones(2)), (1, -1)), None), (((1, keras_tensor),), None), (([2, (keras_tensor,)],), None)]
    answers = [symbolic.any_symbolic_tensors(args, kwargs) for args, kwargs in cases]
    assert answers == [symbolic._keras_any_symbolic_tensors(args, kwargs) for args, kwargs in cases]
    assert answers == [False, True, True, False, True, True, False, False, False, False, True, True]

