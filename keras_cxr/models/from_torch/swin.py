"""timm Swin Transformer keys -> keras-hub `SwinTransformerBackbone` variables (`swin_t/s/b/l`, `tiny_swin`).

Keys of timm >= 0.9 (``swin_tiny_patch4_window7_224``, ``..._small_...``,
``..._base_...``, ``swin_large_patch4_window12_384``): ``patch_embed.proj``,
``patch_embed.norm``, ``layers.i.blocks.j.{norm1, attn.qkv, attn.proj,
attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}``,
``layers.i.downsample.{norm, reduction}`` (i >= 1) and ``norm``. The
classifier ``head.*`` is dropped; the ``relative_position_index`` and
``attn_mask`` buffers are ignored (keras-hub computes both).

The layouts match except for where patch merging sits: timm runs it at the
start of stage i (``layers.i.downsample``), keras-hub at the end of stage
i - 1 (``stage_{i-1}/downsample``). Both concatenate the 2x2 neighbourhood
in the original Swin order (rows, cols) = (0, 0), (1, 0), (0, 1), (1, 1),
pack ``qkv`` as (q, k, v) x heads x head_dim, and index the bias table by
``(dy + w - 1) * (2w - 1) + (dx + w - 1)``; so tensors only change layout
(Linear (out, in) -> Dense (in, out), Conv2d OIHW -> HWIO), never order.
"""

import re

from keras_cxr.models import torch_weights

HEAD = re.compile(r"^head\.")
IGNORED = re.compile(r"(^|\.)(relative_position_index|attn_mask)$")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def targets(backbone):
    """torch key -> `Target` for every weight of a keras-hub `SwinTransformerBackbone`."""
    conv2d, dense, layer_norm = torch_weights.conv2d, torch_weights.dense, torch_weights.layer_norm
    embedding = backbone.patch_embedding
    out = {**conv2d("patch_embed.proj", embedding.proj), **layer_norm("patch_embed.norm", embedding.norm)}
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage.blocks):
            key, attn = f"layers.{i}.blocks.{j}", block.attn
            table = attn.relative_position_bias_table
            out.update({
                **layer_norm(f"{key}.norm1", block.norm1),
                **dense(f"{key}.attn.qkv", attn.qkv),
                **dense(f"{key}.attn.proj", attn.proj),
                f"{key}.attn.relative_position_bias_table": torch_weights.Target(table, tuple(table.shape)),
                **layer_norm(f"{key}.norm2", block.norm2),
                **dense(f"{key}.mlp.fc1", block.mlp.fc1),
                **dense(f"{key}.mlp.fc2", block.mlp.fc2),
            })
        if stage.downsample is not None:  # keras-hub: end of stage i; timm: start of stage i + 1
            out.update({**layer_norm(f"layers.{i + 1}.downsample.norm", stage.downsample.norm),
                        **dense(f"layers.{i + 1}.downsample.reduction", stage.downsample.reduction)})
    out.update(layer_norm("norm", backbone.norm))
    return out


def _window(rows):
    """The window side w of a bias table with (2 w - 1) ** 2 rows."""
    return (round(rows ** 0.5) + 1) // 2


def hint(mismatched):
    """Another window size (bias tables), or patch merging one stage off (the original Swin / timm < 0.9 layout)."""
    for key, got, want in mismatched:
        if key.endswith("relative_position_bias_table") and got[0] != want[0]:
            return (f"The checkpoint's attention window is {_window(got[0])}, the model's {_window(want[0])} "
                    "(swin_t/s/b: 7, swin_l: 12, tiny_swin: 4); keras-cxr does not resize bias tables")
    if any(_DOWNSAMPLE.match(key) for key, _, _ in mismatched):
        return ("Patch merging one stage off is the original Swin / timm < 0.9 layout (layers.i.downsample at the "
                "end of stage i); keras-cxr reads timm >= 0.9's (at the start of stage i + 1): load the checkpoint "
                "with timm >= 0.9 and save its model.state_dict()")
    return ""
