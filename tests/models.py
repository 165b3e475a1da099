"""Reference architectures for the runtime tests, defined layer for layer.

LeNet-300-100 and LeNet-5 are Deep Compression's (Han et al. 2016, Table 1:
Caffe's LeNets, 267K and 431K parameters).  VGG-11/16 (with optional
batch norm), ResNet-18 and MobileNetV2 follow torchvision's definitions
module for module, so their state-dict keys are torchvision's
(``features.0.weight``, ``layer1.0.conv1.weight``, ``classifier.1.weight``)
and their parameter counts match torchvision's.  torchvision is not a
dependency: it cannot be installed here.

Keyword arguments that torchvision does not have (``width_div``, ``hidden``
for VGG, ``width`` for ResNet) exist only to build small variants for fast
tests; their defaults give the torchvision architecture.  Every factory
returns a randomly initialised model (torchvision's init) in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --- LeNets (Deep Compression, Caffe's definitions) -----------------------------------


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected, ReLU between."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.ip1 = nn.Linear(784, 300)
        self.ip2 = nn.Linear(300, 100)
        self.ip3 = nn.Linear(100, num_classes)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.ip1(x))
        x = F.relu(self.ip2(x))
        return self.ip3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet: conv 20 5×5, max pool 2, conv 50 5×5, max pool 2,
    fc 500 + ReLU, fc 10 (no ReLU after the convs)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.ip1 = nn.Linear(800, 500)
        self.ip2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), kernel_size=2, stride=2)
        x = x.view(-1, 800)
        x = F.relu(self.ip1(x))
        return self.ip2(x)


def lenet_300_100(num_classes: int = 10) -> nn.Module:
    return LeNet300100(num_classes).eval()


def lenet5(num_classes: int = 10) -> nn.Module:
    return LeNet5(num_classes).eval()


# --- VGG (torchvision.models.vgg) -------------------------------------------------------

VGG_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 1000, dropout: float = 0.5, last_channels: int = 512, hidden: int = 4096):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def make_layers(cfg: list, batch_norm: bool = False, width_div: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            v = v // width_div
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def _vgg(cfg: str, batch_norm: bool, num_classes: int, width_div: int, hidden: int) -> nn.Module:
    features = make_layers(VGG_CFGS[cfg], batch_norm, width_div)
    return VGG(features, num_classes, last_channels=512 // width_div, hidden=hidden).eval()


def vgg11(num_classes: int = 1000, batch_norm: bool = False, width_div: int = 1, hidden: int = 4096) -> nn.Module:
    return _vgg("A", batch_norm, num_classes, width_div, hidden)


def vgg16(num_classes: int = 1000, batch_norm: bool = False, width_div: int = 1, hidden: int = 4096) -> nn.Module:
    return _vgg("D", batch_norm, num_classes, width_div, hidden)


# --- ResNet-18 (torchvision.models.resnet) -------------------------------------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, layers: list[int], num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * BasicBlock.expansion, stride), nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000, width: int = 64) -> nn.Module:
    return ResNet([2, 2, 2, 2], num_classes, width).eval()


def resnet18_small() -> nn.Module:
    """A no-argument factory of a small ResNet-18 (10 classes, width 8), for
    ``cmz compress --model models:resnet18_small``."""
    return resnet18(10, width=8)


# --- MobileNetV2 (torchvision.models.mobilenetv2) -------------------------------------------


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # round down by no more than 10%
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation with BatchNorm2d (a Sequential:
    keys ``.0`` conv, ``.1`` norm, ``.2`` activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, activation_layer=nn.ReLU6, dilation: int = 1):
        padding = (kernel_size - 1) // 2 * dilation
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            activation_layer(inplace=True),
        ]
        super().__init__(*layers)
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers.extend([
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8, dropout: float = 0.2):
        super().__init__()
        input_channel = 32
        last_channel = 1280
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    return MobileNetV2(num_classes, width_mult).eval()


# --- test helpers ----------------------------------------------------------------------------


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters and
    every bias small random values, so that BatchNorm folding and biases are
    really exercised (torchvision's init leaves them at 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
    return model


# name → (factory of the full-size model, its input shape, factory of a small variant, its input shape)
ARCHITECTURES = {
    "lenet_300_100": (lenet_300_100, (1, 28, 28), lenet_300_100, (1, 28, 28)),
    "lenet5": (lenet5, (1, 28, 28), lenet5, (1, 28, 28)),
    "vgg11": (vgg11, (3, 224, 224), lambda: vgg11(10, width_div=8, hidden=64), (3, 32, 32)),
    "vgg16": (vgg16, (3, 224, 224), lambda: vgg16(10, batch_norm=True, width_div=8, hidden=64), (3, 32, 32)),
    "resnet18": (resnet18, (3, 224, 224), lambda: resnet18(10, width=16), (3, 32, 32)),
    "mobilenet_v2": (mobilenet_v2, (3, 224, 224), lambda: mobilenet_v2(10, width_mult=0.25), (3, 32, 32)),
}

# torchvision's parameter counts (sum of numel over model.parameters()).
TORCHVISION_PARAMETERS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512,
    "mobilenet_v2": 3_504_872,
}
