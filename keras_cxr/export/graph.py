"""The exported computation: uint8 images -> the Keras model -> optional calibration -> probabilities.

`ExportModule` wraps a loaded keras-cxr model as a `torch.nn.Module` whose
input is the uint8 batch `load_image` gives and whose output is float32
probabilities, with the calibration folded in exactly as
`keras_cxr.calibration.Calibration.apply` computes it:
``softmax(log(clip(p, 1e-12, 1)) * scale + bias)`` (temperature: ``scale
= 1/T``, ``bias = 0``; vector scaling: its weights and biases). ONNX and
TorchScript trace this module; the ``.keras`` export builds the same
chain from Keras ops (`calibrated_keras_model`), which Keras saves and
loads in safe mode.

Both must be traced with `keras_cxr.accel` off, so the graph holds Keras's
own operations (`keras_cxr.accel.disabled`).
"""

import numpy as np

from keras_cxr.evaluation import LOG_CLIP


def scale_and_bias(calibration, num_classes):
    """`(scale, bias)` float32 `(C,)` vectors of a calibration (`(1, 0)` for None)."""
    if calibration is None:
        return np.ones(num_classes, np.float32), np.zeros(num_classes, np.float32)
    if calibration.method == "temperature":
        scale = np.full(num_classes, 1.0 / calibration.parameters["temperature"])
        return scale.astype(np.float32), np.zeros(num_classes, np.float32)
    return (np.asarray(calibration.parameters["weights"], np.float32),
            np.asarray(calibration.parameters["biases"], np.float32))


def export_module(model, calibration=None):
    """An `ExportModule` (a `torch.nn.Module`, eval mode) of a Keras model and an optional calibration."""
    import torch

    class ExportModule(torch.nn.Module):
        """uint8 `(N, S, S, 3)` -> float32 probabilities `(N, C)`, calibrated when given one."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.calibrated = calibration is not None
            scale, bias = scale_and_bias(calibration, int(model.output_shape[-1]))
            self.register_buffer("scale", torch.from_numpy(scale))
            self.register_buffer("bias", torch.from_numpy(bias))

        def forward(self, images):
            probs = self.model(images.to(torch.float32), training=False).to(torch.float32)
            if not self.calibrated:
                return probs
            logits = torch.log(torch.clamp(probs, min=LOG_CLIP, max=1.0)) * self.scale + self.bias
            return torch.softmax(logits, dim=-1)

    return ExportModule().eval()


def calibrated_keras_model(model, calibration):
    """`model` with the calibration appended as Keras ops (a new functional model sharing its layers).

    The result is named ``<name>_calibrated``, so keras-cxr's loaders do
    not treat it as a plain architecture for `keras_cxr.accel`.
    """
    import keras

    if calibration is None:
        return model
    scale, bias = scale_and_bias(calibration, int(model.output_shape[-1]))
    logits = keras.ops.log(keras.ops.clip(model.output, LOG_CLIP, 1.0)) * scale + bias
    probs = keras.layers.Activation("softmax", dtype="float32", name="calibrated_probs")(logits)
    return keras.Model(model.input, probs, name=f"{model.name}_calibrated")


def example_batch(image_size, batch=2):
    """A uint8 batch to trace with (its values do not matter; its batch size is made dynamic)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
