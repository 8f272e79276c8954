"""A pure-torch Swin Transformer with timm's key names: the reference for the Swin conversion tests.

Module names as timm >= 0.9's `SwinTransformer` (``patch_embed.proj``,
``layers.i.downsample`` at the start of stage i >= 1, ``layers.i.blocks.j``,
``norm``, ``head.fc``) and the original Swin's math: window attention with a
relative-position bias, shifted windows masked by region, 2x2 patch merging
in the order (0, 0), (1, 0), (0, 1), (1, 1). Its `relative_position_index`
and `attn_mask` buffers are saved, as in the original Swin checkpoints, so
tests see them ignored. Tests need no timm.
"""

import numpy as np
import torch
from torch import nn


def _windows(x, window):
    """(B, H, W, C) -> (B * windows, window * window, C), windows row-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _unwindows(x, window, b, h, w):
    c = x.shape[-1]
    x = x.reshape(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class _Attention(nn.Module):
    def __init__(self, dim, heads, window):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.2)
        rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        coords = torch.stack([rows.flatten(), cols.flatten()])
        delta = coords[:, :, None] - coords[:, None, :] + window - 1  # (2, N, N), each in [0, 2 window - 2]
        self.register_buffer("relative_position_index", delta[0] * (2 * window - 1) + delta[1])

    def forward(self, x, mask=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)
        if mask is not None:
            attn = (attn.reshape(-1, mask.shape[0], self.heads, n, n) + mask[:, None]).reshape(b, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim, heads, window, shift, resolution):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, heads, window)
        self.norm2, self.mlp = nn.LayerNorm(dim), _Mlp(dim)
        if shift:  # -100 between tokens of a shifted window that come from different regions of the image
            bands = torch.zeros(resolution, dtype=torch.long)
            bands[resolution - window:], bands[resolution - shift:] = 1, 2
            regions = (bands[:, None] * 3 + bands[None, :])[None, :, :, None]
            regions = _windows(regions, window)[..., 0]
            self.register_buffer("attn_mask", (regions[:, None, :] != regions[:, :, None]).float() * -100.0)
        else:
            self.attn_mask = None

    def forward(self, x):  # (B, H, W, C)
        b, h, w, _ = x.shape
        y = torch.roll(self.norm1(x), (-self.shift, -self.shift), (1, 2))
        y = _unwindows(self.attn(_windows(y, self.window), self.attn_mask), self.window, b, h, w)
        x = x + torch.roll(y, (self.shift, self.shift), (1, 2))
        return x + self.mlp(self.norm2(x))


class _Merging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class _Stage(nn.Module):
    def __init__(self, dim, depth, heads, window, resolution, merge):
        super().__init__()
        self.downsample = _Merging(dim // 2) if merge else nn.Identity()
        shifts = [0 if j % 2 == 0 or resolution <= window else window // 2 for j in range(depth)]
        self.blocks = nn.Sequential(*[_Block(dim, heads, window, s, resolution) for s in shifts])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class _PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(3, dim, patch, stride=patch), nn.LayerNorm(dim)

    def forward(self, x):  # NCHW -> NHWC
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class _Head(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.fc = nn.Linear(dim, classes)


class TorchSwin(nn.Module):
    """timm's Swin key layout (patch 4, MLP ratio 4); `forward` returns the mean of the normalised last tokens."""

    def __init__(self, image_size=64, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window=4, classes=1000):
        super().__init__()
        self.patch_embed = _PatchEmbed(embed_dim, 4)
        resolution = image_size // 4
        self.layers = nn.Sequential(*[
            _Stage(embed_dim * 2 ** i, depth, heads, window, resolution // 2 ** i, merge=i > 0)
            for i, (depth, heads) in enumerate(zip(depths, num_heads))
        ])
        self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1))
        self.head = _Head(embed_dim * 2 ** (len(depths) - 1), classes)

    def forward(self, x):
        return self.norm(self.layers(self.patch_embed(x))).mean(dim=(1, 2))


def reference(seed=0, **kwargs):
    """A `TorchSwin` (default: keras-cxr's `tiny_swin`) in eval mode, LayerNorms and biases randomised."""
    torch.manual_seed(seed)
    model = TorchSwin(**kwargs)
    with torch.no_grad():
        for key, tensor in model.named_parameters():
            if "norm" in key:
                tensor.uniform_(0.5, 1.5) if key.endswith("weight") else tensor.normal_(0.0, 0.2)
            elif key.endswith(".bias"):
                tensor.normal_(0.0, 0.2)
    return model.eval()


def features(model, images):
    """`model`'s pooled features of NHWC numpy images (already normalised), as numpy."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
