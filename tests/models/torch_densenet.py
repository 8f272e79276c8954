"""A pure-torch DenseNet-BC in torchvision / torchxrayvision layout: the reference for the conversion tests.

Same module names and forward as torchvision's `densenet121` (growth 32,
bottleneck 4 x 32, 64 stem channels), any block configuration, 1 or 3 input
channels, and torchxrayvision's extras on request (an 18-way classifier and
an `op_threshs` buffer), so tests need no torchvision.
"""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class _DenseLayer(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(channels), nn.ReLU()
        self.conv1 = nn.Conv2d(channels, 128, kernel_size=1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(128), nn.ReLU()
        self.conv2 = nn.Conv2d(128, 32, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(self.relu1(self.norm1(x)))
        return torch.cat([x, self.conv2(self.relu2(self.norm2(y)))], 1)


class _Transition(nn.Sequential):
    def __init__(self, channels):
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(channels)), ("relu", nn.ReLU()),
            ("conv", nn.Conv2d(channels, channels // 2, kernel_size=1, bias=False)),
            ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
        ]))


class TorchDenseNet(nn.Module):
    """torchvision's DenseNet layout; `forward` returns the pooled features (before `classifier`)."""

    def __init__(self, blocks=(6, 12, 24, 16), in_channels=3, classes=1000, op_threshs=False):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(64)), ("relu0", nn.ReLU()),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        channels = 64
        for i, count in enumerate(blocks):
            block = nn.Sequential(OrderedDict(
                (f"denselayer{j + 1}", _DenseLayer(channels + j * 32)) for j in range(count)
            ))
            self.features.add_module(f"denseblock{i + 1}", block)
            channels += count * 32
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(channels))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, classes)
        if op_threshs:
            self.register_buffer("op_threshs", torch.rand(classes))

    def forward(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)


def reference(blocks=(1, 1, 1, 1), in_channels=3, seed=0, **kwargs):
    """A `TorchDenseNet` in eval mode with random weights and BatchNorm statistics that matter."""
    torch.manual_seed(seed)
    model = TorchDenseNet(blocks, in_channels, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def features(model, images):
    """`model`'s pooled features of NHWC numpy images, as numpy."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
