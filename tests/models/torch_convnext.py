"""A pure-torch ConvNeXt with timm's module names: the reference for the ConvNeXt conversion tests.

Same keys and forward as timm's `convnext_tiny` family (4x4/4 stem conv and
LayerNorm; per stage a LayerNorm + 2x2/2 downsampling conv from stage 1 on,
then blocks of 7x7 depthwise conv, LayerNorm, Linear-GELU-Linear and a
layer scale `gamma`, added to the input; average pooling, `head.norm`,
`head.fc`), all LayerNorms with epsilon 1e-6, so tests need no timm.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class _ChannelsNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        return x + (self.mlp(y) * self.gamma).permute(0, 3, 1, 2)


class _Stage(nn.Module):
    def __init__(self, in_dim, dim, depth):  # in_dim None: stage 0, no downsampling
        super().__init__()
        self.downsample = nn.Identity() if in_dim is None else nn.Sequential(
            _ChannelsNorm(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
        self.blocks = nn.Sequential(*(_Block(dim) for _ in range(depth)))

    def forward(self, x):
        return self.blocks(self.downsample(x))


class _Head(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)


class TorchConvNeXt(nn.Module):
    """timm's ConvNeXt layout; `forward` returns the pooled, layer-normalised features (before `head.fc`)."""

    def __init__(self, depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), _ChannelsNorm(dims[0], eps=1e-6))
        self.stages = nn.Sequential(*(_Stage(dims[i - 1] if i else None, dims[i], depths[i]) for i in range(4)))
        self.head = _Head(dims[-1], classes)

    def forward(self, x):
        return self.head.norm(self.stages(self.stem(x)).mean((2, 3)))


def reference(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), seed=0, **kwargs):
    """A `TorchConvNeXt` in eval mode, every weight random (layer scales and norms too, so that all matter)."""
    torch.manual_seed(seed)
    model = TorchConvNeXt(depths, dims, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
            if isinstance(module, (nn.LayerNorm, nn.Conv2d, nn.Linear)):
                module.bias.normal_(0.0, 0.2)
            if isinstance(module, _Block):
                module.gamma.uniform_(0.5, 1.5)
    return model.eval()


def features(model, images):
    """`model`'s features of NHWC numpy images (already ImageNet-normalised), as numpy."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
