"""The table of patches `keras_cxr.accel.enable()` applies, in order, and their tested versions.

`tested` gives, per distribution, the versions the patch's tests passed on
(`lowest <= version < below`); outside them the patch is skipped with a
warning and Keras's own code runs. Widen a range only after running
`tests/accel/` on the new version.
"""

from keras_cxr.accel.versions import Patch

KERAS = ("3.14", "3.16")
# keras-hub 0.32 needs Keras 3.15, so the Swin patch has only been tested there.
KERAS_FOR_HUB = ("3.15", "3.16")
TORCH = ("2.13", "2.15")
KERAS_HUB = ("0.32", "0.33")

PATCHES = (
    Patch("conv", "keras_cxr.accel.conv", ("keras.src.backend.torch.nn.conv",),
          {"keras": KERAS, "torch": TORCH},
          "channels-last convolutions without activation copies; kernels in torch's memory order"),
    Patch("dense", "keras_cxr.accel.dense", ("keras.layers.Dense.call",),
          {"keras": KERAS, "torch": TORCH}, "Dense as one fused addmm"),
    Patch("batchnorm", "keras_cxr.accel.batchnorm", ("keras.layers.BatchNormalization.call",),
          {"keras": KERAS, "torch": TORCH},
          "batch norm as one fused kernel; moving statistics updated together per model call"),
    Patch("adam", "keras_cxr.accel.adam", ("keras.src.backend.torch.optimizers.torch_adam.Adam._parallel_update_step",
                                           "keras.src.backend.torch.optimizers.torch_optimizer.TorchOptimizer"
                                           "._apply_weight_decay"),
          {"keras": KERAS, "torch": TORCH}, "Adam/AdamW, weight decay included, as one fused pass"),
    Patch("loss_scale", "keras_cxr.accel.loss_scale",
          ("keras.src.optimizers.loss_scale_optimizer.LossScaleOptimizer._common_apply",),
          {"keras": KERAS, "torch": TORCH}, "mixed-precision finite check and unscale as two multi-tensor passes"),
    Patch("graph", "keras_cxr.accel.graph",
          ("keras.src.models.functional.Functional.call", "keras.layers.Layer.__call__"),
          {"keras": KERAS, "torch": TORCH}, "marked models' graphs walked without Layer.__call__ overhead"),
    Patch("symbolic", "keras_cxr.accel.symbolic", ("keras.src.backend.common.keras_tensor.any_symbolic_tensors",),
          {"keras": KERAS, "torch": TORCH}, "keras.ops' symbolic-argument check without a pytree walk"),
    Patch("seeds", "keras_cxr.accel.seeds", ("keras.src.backend.torch.random.torch_seed_generator",),
          {"keras": KERAS, "torch": TORCH}, "seeded draws without reading the seed back from the device"),
    Patch("swin", "keras_cxr.accel.swin",
          tuple(f"keras_hub.src.models.swin_transformer.swin_transformer_layers.{name}.call"
                for name in ("SwinTransformerBlock", "WindowAttention", "Mlp", "PatchMerging", "DropPath")),
          {"keras": KERAS_FOR_HUB, "keras-hub": KERAS_HUB, "torch": TORCH},
          "keras-hub's Swin layers with direct torch calls and cached constants (once keras_hub is imported)"),
    Patch("trace", "keras_cxr.accel.trace", (),
          {"keras": KERAS, "torch": TORCH}, "inference of marked models replayed from a verified TorchScript trace"),
)
