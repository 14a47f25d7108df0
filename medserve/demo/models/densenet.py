"""DenseNet-121 (Huang et al., 2017) in plain torch, shaped for single-channel chest radiographs.

The layout follows the ImageNet DenseNet-121 (growth rate 32, blocks of 6/12/24/16 layers, bottleneck
width 4 x growth, 64 initial features, compression 0.5) with one input channel and a multi-label head
whose sigmoid is part of the module, so an exported graph returns probabilities.

torch is imported when :func:`densenet121` is called, never at module import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

GROWTH_RATE = 32
BLOCK_CONFIG: tuple[int, ...] = (6, 12, 24, 16)
BN_SIZE = 4
NUM_INIT_FEATURES = 64


def densenet121(*, in_channels: int = 1, num_classes: int = 14) -> nn.Module:
    """A freshly initialised DenseNet-121 mapping ``[N, in_channels, H, W]`` to ``[N, num_classes]``
    sigmoid probabilities. Seed torch (``torch.manual_seed``) first for reproducible weights."""
    import torch
    from torch import nn

    class DenseLayer(nn.Module):
        def __init__(self, in_features: int) -> None:
            super().__init__()
            width = BN_SIZE * GROWTH_RATE
            self.norm1 = nn.BatchNorm2d(in_features)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(in_features, width, kernel_size=1, bias=False)
            self.norm2 = nn.BatchNorm2d(width)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(width, GROWTH_RATE, kernel_size=3, padding=1, bias=False)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            bottleneck = self.conv1(self.relu1(self.norm1(features)))
            new = self.conv2(self.relu2(self.norm2(bottleneck)))
            return torch.cat([features, new], dim=1)

    def dense_block(num_layers: int, in_features: int) -> nn.Sequential:
        return nn.Sequential(*(DenseLayer(in_features + i * GROWTH_RATE) for i in range(num_layers)))

    def transition(in_features: int, out_features: int) -> nn.Sequential:
        return nn.Sequential(
            nn.BatchNorm2d(in_features),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_features, out_features, kernel_size=1, bias=False),
            nn.AvgPool2d(kernel_size=2, stride=2),
        )

    class DenseNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, NUM_INIT_FEATURES, kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(NUM_INIT_FEATURES),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            ]
            features = NUM_INIT_FEATURES
            for index, num_layers in enumerate(BLOCK_CONFIG):
                layers.append(dense_block(num_layers, features))
                features += num_layers * GROWTH_RATE
                if index != len(BLOCK_CONFIG) - 1:
                    layers.append(transition(features, features // 2))
                    features //= 2
            layers += [nn.BatchNorm2d(features), nn.ReLU(inplace=True)]
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(features, num_classes)
            self._initialise()

        def _initialise(self) -> None:
            # As torchvision's DenseNet: He-normal convolutions, unit BN scale, zero biases.
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Linear):
                    nn.init.zeros_(module.bias)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(image), 1), 1)
            return torch.sigmoid(self.classifier(pooled))

    return DenseNet()
