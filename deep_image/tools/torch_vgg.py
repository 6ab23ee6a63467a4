"""torchvision's VGG module layout (features / avgpool / classifier) in plain PyTorch, at any
width: the same state-dict keys and shapes as torchvision.models.vgg16/19. Used to test weight
import and to time the same network in PyTorch (bench/step.py)."""

from __future__ import annotations

from deep_image import constants


def torchvision_layout_vgg(variant: str, width: float, num_classes: int, side: int):
    import torch
    nn = torch.nn
    layers, cin = [], 3
    for b, n in enumerate(constants.CONVS_PER_BLOCK[variant]):
        cout = max(1, int(round(constants.BLOCK_CHANNELS[b] * width)))
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.MaxPool2d(2, 2))
    fc = max(1, int(round(constants.FC_WIDTH * width)))

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((side, side))
            self.classifier = nn.Sequential(
                nn.Linear(cin * side * side, fc), nn.ReLU(True), nn.Dropout(),
                nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()
