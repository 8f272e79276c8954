"""A pure-torch EfficientNetV2 with timm `tf_efficientnetv2` key names: the reference for the conversion tests.

Written from the architecture (not from timm): TF 'same' padding, BatchNorm
epsilon 1e-3, SiLU, squeeze-excite on the expanded channels with
``input channels * se_ratio`` reduced ones. Blocks are described like
keras.applications' `blocks_args` (after width rounding), so tests need no timm.
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class SameConv(nn.Conv2d):
    """A bias-free (unless asked) Conv2d with TensorFlow's 'same' padding (more at the bottom / right)."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, bias=False):
        super().__init__(cin, cout, kernel, stride, groups=groups, bias=bias)

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.conv_expand(s))


class Block(nn.Module):
    """One block, its modules named as timm names them for its type (see from_torch.efficientnet_v2)."""

    def __init__(self, cin, cout, kernel, stride, expand, se_ratio, fused):
        super().__init__()
        mid = cin * expand
        self.skip = stride == 1 and cin == cout
        self.kind = ("conv" if expand == 1 else "fused") if fused else ("separable" if expand == 1 else "mbconv")
        if self.kind == "conv":
            self.conv, self.bn1 = SameConv(cin, cout, kernel, stride), _bn(cout)
            return
        if self.kind == "fused":
            self.conv_exp, self.bn1 = SameConv(cin, mid, kernel, stride), _bn(mid)
        if self.kind == "mbconv":
            self.conv_pw, self.bn1 = SameConv(cin, mid, 1), _bn(mid)
        if not fused:
            self.conv_dw = SameConv(mid, mid, kernel, stride, groups=mid)
            setattr(self, "bn2" if self.kind == "mbconv" else "bn1", _bn(mid))
        self.se = SqueezeExcite(mid, max(1, int(cin * se_ratio))) if se_ratio else nn.Identity()
        project = "conv_pw" if self.kind == "separable" else "conv_pwl"
        setattr(self, project, SameConv(mid, cout, 1))
        setattr(self, {"fused": "bn2", "mbconv": "bn3", "separable": "bn2"}[self.kind], _bn(cout))

    def forward(self, x):
        if self.kind == "conv":
            y = F.silu(self.bn1(self.conv(x)))
        elif self.kind == "fused":
            y = self.bn2(self.conv_pwl(self.se(F.silu(self.bn1(self.conv_exp(x))))))
        elif self.kind == "mbconv":
            y = F.silu(self.bn1(self.conv_pw(x)))
            y = self.bn3(self.conv_pwl(self.se(F.silu(self.bn2(self.conv_dw(y))))))
        else:
            y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return x + y if self.skip else y


class TorchEfficientNetV2(nn.Module):
    """`blocks_args` (keras.applications' dicts, filters already rounded) as timm's module tree."""

    def __init__(self, blocks_args, head=1280, classes=1000):
        super().__init__()
        stem = blocks_args[0]["input_filters"]
        self.conv_stem, self.bn1 = SameConv(3, stem, 3, 2), _bn(stem)
        self.blocks = nn.Sequential(*[
            nn.Sequential(*[
                Block(a["input_filters"] if r == 0 else a["output_filters"], a["output_filters"], a["kernel_size"],
                      a["strides"] if r == 0 else 1, a["expand_ratio"], a["se_ratio"], a["conv_type"] == 1)
                for r in range(a["num_repeat"])
            ]) for a in blocks_args
        ])
        cout = blocks_args[-1]["output_filters"]
        self.conv_head, self.bn2 = SameConv(cout, head, 1), _bn(head)
        self.classifier = nn.Linear(head, classes)

    def forward(self, x):
        """Pooled features (before `classifier`) of images already scaled to [-1, 1]."""
        x = F.silu(self.bn1(self.conv_stem(x)))
        x = F.silu(self.bn2(self.conv_head(self.blocks(x))))
        return x.mean((2, 3))


def randomise_batch_norms(model, seed=0):
    """BatchNorm weights and running statistics that matter, in place (eval mode returned)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model.eval()


def keras_input(images):
    """keras.applications' EfficientNetV2 rescaling of 0-255 NHWC images, as NCHW float32 for torch."""
    x = images.astype("float32") / 128.0 - 1.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def features(model, images):
    """`model`'s pooled features of 0-255 NHWC numpy images (rescaled as Keras does), as numpy."""
    with torch.no_grad():
        return model(keras_input(images)).numpy()
