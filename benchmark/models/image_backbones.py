"""Image backbones (the image track): the CIFAR ResNet-18 of hc-fang/ssd ``models/resnet.py``.

Same contract as the video backbones, with one spatial axis fewer: ``forward(x: (B, 3, H, W))
-> (B, out_channels, H', W')`` feature map of the last stage, ``out_channels`` = 512.
Consumers pool by averaging every axis after the channel (``fmap.flatten(2).mean(2)``),
which for a 32 x 32 input is exactly the official ``AvgPool2d((4, 4))`` + flatten with
``fc = Identity`` (``mains/train_fedalignuniform.py``:105).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import register_backbone


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, identity or 1x1 conv-BN shortcut, ReLU (``models/resnet.py``:5-27)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_backbone("cifar_resnet18")
class CifarResNet18(nn.Module):
    """ResNet-18 for 32 x 32 images: 3x3 stride-1 stem, no max-pool, stages 64/128/256/512
    with strides 1/2/2/2, two BasicBlocks each (``models/resnet.py``:58-94, ``ResNet18``).
    (B, 3, 32, 32) -> (B, 512, 4, 4). Parameter names follow the official module (without
    ``avgpool``/``fc``), so official encoder weights load with ``strict=False`` minus ``fc.*``.
    PyTorch's default initialisation, as the official model (no custom init)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.in_planes = int(width)
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, 2, 1)
        self.layer2 = self._make_layer(2 * width, 2, 2)
        self.layer3 = self._make_layer(4 * width, 2, 2)
        self.layer4 = self._make_layer(8 * width, 2, 2)
        self.out_channels = 8 * int(width)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"cifar_resnet18 expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))
