"""keras-hub's Swin Transformer layers without the per-op Keras overhead.

keras-hub's `SwinTransformerBlock`, `WindowAttention`, `Mlp` and
`PatchMerging` are composite layers whose `call` runs `keras.ops`: each op
converts and type-checks its arguments and asks whether any is symbolic
(a pytree walk) before the torch kernel runs, and every shifted-window
block rebuilds its constant attention mask (about 30 ops) and every
attention layer its relative-position index on every call. Profiled on
Swin-T (CPU, batch 8), that was 16% of a 128 px forward pass and 9% of a
224 px training step.

`install()` replaces those four `call` methods with versions that run the
same torch kernels in the same order: shape-only ops (reshape, permute,
roll, slicing) as torch methods, dtype-sensitive ones (`matmul`,
`softmax`, `gelu`) through the same Keras torch-backend functions
`keras.ops` ends in, and the shift mask, the int64 position index and the
0-d attention scale cached per layer (their values never change). Patch
merging's four strided slices and concatenation become one reshape and
permute (the same tensor; its backward is one copy instead of four
zero-filled slices summed). Sublayers
are still called as layers. `DropPath` (stochastic depth) draws the same
random numbers and, on the CPU in float32, scales and masks in one division
where keras-hub runs a division and a multiplication. Outputs, gradients
and variable updates are bit-identical to keras-hub's (tests compare them
in training, with drop path, under float32 and mixed_float16). Inputs
these versions do not cover (padding to a window multiple, odd
patch-merging sizes, `return_attns`, another activation) go to keras-hub's
own code.

`keras_cxr.accel` installs it once keras_hub's Swin module is imported
(keras-cxr imports keras_hub only to build or load a keras-hub backbone).
"""

import inspect
import sys
import weakref

import keras
import torch

MODULE = "keras_hub.src.models.swin_transformer.swin_transformer_layers"

_keras_hub_calls = {}  # class name -> keras-hub's own call, while installed
# Private Keras functions, bound by `install` (never at import).
torch_nn = torch_numpy = convert_to_tensor = None

# layer -> {key: tensor}: constants a layer derives from its configuration.
_CONSTANTS = weakref.WeakKeyDictionary()

# The `call` parameters each replaced keras-hub class had when the replacement was written.
_SIGNATURES = {
    "DropPath": ["self", "x", "training"],
    "SwinTransformerBlock": ["self", "x"],
    "WindowAttention": ["self", "x", "mask", "return_attns"],
    "Mlp": ["self", "x"],
    "PatchMerging": ["self", "x", "H", "W"],
}


def ready():
    """Whether keras-hub's Swin module is imported (the patch waits for it otherwise)."""
    return MODULE in sys.modules


def probe():
    layers = sys.modules.get(MODULE)
    if layers is None:
        return None  # nothing to check until keras_hub's Swin module is imported
    for name, expected in _SIGNATURES.items():
        cls = getattr(layers, name, None)
        if cls is None:
            return f"{MODULE} has no {name}"
        params = list(inspect.signature(cls.call).parameters)
        if params != expected:
            return f"keras-hub {name}.call takes {params}"
    return None


def _constant(layer, key, make):
    per_layer = _CONSTANTS.setdefault(layer, {})
    if key not in per_layer:
        per_layer[key] = make()
    return per_layer[key]


def _partition(x, window):
    """(B, H, W, C) -> (B * windows, window, window, C), as keras-hub's `window_partition`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def _reverse(windows, window, h, w, c):
    """The inverse of `_partition`, as keras-hub's `window_reverse`."""
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.reshape(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _shift_mask(block, device):
    """The shifted-window attention mask keras-hub's block builds on every call (0 or -100)."""
    h, w = block.input_resolution
    window, shift = block.window_size, block.shift_size
    regions = torch.zeros((1, h, w, 1), dtype=torch.int32, device=device)
    spans_h = ((0, h - window), (h - window, h - shift), (h - shift, h))
    spans_w = ((0, w - window), (w - window, w - shift), (w - shift, w))
    for i, (h0, h1) in enumerate(spans_h):
        for j, (w0, w1) in enumerate(spans_w):
            regions[:, h0:h1, w0:w1, :] = 3 * i + j
    windows = _partition(regions, window).reshape(-1, window * window)
    return (windows.unsqueeze(1) != windows.unsqueeze(2)).to(torch.float32) * -100.0


def _block_call(self, x):
    h, w = self.input_resolution
    window, shift = self.window_size, self.shift_size
    if not isinstance(x, torch.Tensor) or h % window or w % window:
        return _keras_hub_calls["SwinTransformerBlock"](self, x)
    b, _, c = x.shape
    shortcut = x
    x = self.norm1(x).reshape(b, h, w, c)
    mask = None
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        mask = _constant(self, ("mask", x.device), lambda: _shift_mask(self, x.device))
    windows = self.attn(_partition(x, window).reshape(-1, window * window, c), mask=mask)
    x = _reverse(windows.reshape(-1, window, window, c), window, h, w, c)
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + self.drop_path(x.reshape(b, h * w, c))
    return x + self.drop_path(self.mlp(self.norm2(x)))


def _attention_call(self, x, mask=None, return_attns=False):
    if return_attns or not isinstance(x, torch.Tensor):
        return _keras_hub_calls["WindowAttention"](self, x, mask=mask, return_attns=return_attns)
    b, n, c = x.shape
    qkv = self.qkv(x)
    q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    # keras-hub multiplies by the scale cast to the activations' dtype (a 0-d tensor).
    scale = _constant(self, ("scale", qkv.dtype, qkv.device),
                      lambda: torch.as_tensor(self.scale, dtype=qkv.dtype, device=qkv.device))
    attn = torch_numpy.matmul(q * scale, k.permute(0, 1, 3, 2))
    index = _constant(self, ("index", x.device),
                      lambda: convert_to_tensor(self.relative_position_index).long().to(x.device))
    table = convert_to_tensor(self.relative_position_bias_table)
    # Contiguous, the bias broadcasts over the windows 3x faster than as a permuted view (same sums).
    attn = attn + torch.nn.functional.embedding(index, table).permute(2, 0, 1).contiguous()
    if mask is not None:
        windows = mask.shape[0]
        attn = attn.reshape(b // windows, windows, self.num_heads, n, n) + mask.unsqueeze(1)[None, ...]
        attn = attn.reshape(-1, self.num_heads, n, n)
    attn = self.attention_dropout_layer(torch_nn.softmax(attn, -1))
    x = torch_numpy.matmul(attn, v).permute(0, 2, 1, 3).reshape(b, n, c)
    return self.proj_drop(self.proj(x))


def _mlp_call(self, x):
    if self.act_layer is not keras.activations.gelu or not isinstance(x, torch.Tensor):
        return _keras_hub_calls["Mlp"](self, x)
    x = torch_nn.gelu(self.fc1(x), approximate=False)
    if self.dropout is not None:
        x = self.dropout(x)
    x = self.fc2(x)
    return x if self.dropout is None else self.dropout(x)


def _merging_call(self, x, H, W):  # noqa: N803  (keras-hub's argument names)
    if H % 2 or W % 2 or not isinstance(x, torch.Tensor):
        return _keras_hub_calls["PatchMerging"](self, x, H, W)
    b, _, c = x.shape
    # keras-hub concatenates the four strided quarters (rows, columns) = (0::2, 0::2), (1::2, 0::2),
    # (0::2, 1::2), (1::2, 1::2) along channels (its zero-width padding of even sides is a plain copy).
    # The same tensor as one reshape and permute: position (i, j), channel block 2 * dw + dh holds
    # pixel (2i + dh, 2j + dw). Its backward is one copy instead of four zero-filled slices and a sum.
    x = x.reshape(b, H // 2, 2, W // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, H // 2, W // 2, 4 * c)
    return self.reduction(self.norm(x)).reshape(b, -1, 2 * c)


def _drop_path_call(self, x, training=None):
    if (not training or self.drop_prob == 0.0 or not isinstance(x, torch.Tensor)
            or x.device.type != "cpu" or x.dtype != torch.float32):
        return _keras_hub_calls["DropPath"](self, x, training=training)
    keep_prob = 1.0 - self.drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = torch.floor(keep_prob + keras.random.uniform(shape, dtype=x.dtype, seed=self.seed_generator)) > 0
    # keras-hub's `x / keep_prob * mask` as one full-size op, forward and backward: dividing by
    # keep_prob where kept and by inf where dropped gives the same bits (signed zeros, NaNs) on
    # the CPU in float32, where dividing by a float scalar or a float32 tensor agrees exactly.
    return x / torch.where(kept, keep_prob, torch.inf)


_FAST_CALLS = {
    "DropPath": _drop_path_call,
    "SwinTransformerBlock": _block_call,
    "WindowAttention": _attention_call,
    "Mlp": _mlp_call,
    "PatchMerging": _merging_call,
}


def install():
    """Patch keras-hub's Swin layers (call it once `ready()`)."""
    global torch_nn, torch_numpy, convert_to_tensor
    from keras.src.backend.torch import core
    from keras.src.backend.torch import nn as backend_nn
    from keras.src.backend.torch import numpy as backend_numpy

    torch_nn, torch_numpy, convert_to_tensor = backend_nn, backend_numpy, core.convert_to_tensor
    layers = sys.modules[MODULE]
    for name, call in _FAST_CALLS.items():
        cls = getattr(layers, name)
        _keras_hub_calls[name] = cls.call
        cls.call = call


def uninstall():
    """Restore keras-hub's own `call` methods."""
    layers = sys.modules.get(MODULE)
    for name, call in list(_keras_hub_calls.items()):
        getattr(layers, name).call = call
        del _keras_hub_calls[name]
