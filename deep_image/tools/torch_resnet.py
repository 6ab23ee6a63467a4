"""torchvision's ResNet-18/50 module layout in plain PyTorch, at any width: the same state-dict
keys and shapes as torchvision.models.resnet18/50 (torchvision's own package does not load
beside this machine's CPU torch). Used to test weight import and to time the same network in
PyTorch (bench/step.py)."""

from __future__ import annotations

from deep_image.models.resnet import EXPANSION, STAGES, scaled


def torchvision_layout_resnet(variant: str, width: float, num_classes: int):
    import torch
    nn = torch.nn
    block, counts = STAGES[variant]

    class Block(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            cout = planes * EXPANSION[block]
            if block == "bottleneck":
                self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
                self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(cout)
                self.n = 3
            else:
                self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.n = 2
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            y = x
            for j in range(1, self.n + 1):
                y = getattr(self, f"bn{j}")(getattr(self, f"conv{j}")(y))
                if j < self.n:
                    y = torch.relu(y)
            identity = x if self.downsample is None else self.downsample(x)
            return torch.relu(y + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            stem = scaled(64, width)
            self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = stem
            for stage, count in enumerate(counts):
                planes = scaled(64 * 2 ** stage, width)
                blocks = []
                for i in range(count):
                    blocks.append(Block(cin, planes, 2 if stage > 0 and i == 0 else 1))
                    cin = planes * EXPANSION[block]
                setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for stage in range(4):
                x = getattr(self, f"layer{stage + 1}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()
