"""CUB-200-2011 with today's standard fine-grained baseline (not in the paper): ResNet-50,
ImageNet weights from torchvision, all layers fine-tuned on 448x448 crops of 512x512 images,
the paper's six augmentations, validation holdout and dense multi-scale + flip testing.

Target: 84-86% top-1 (published ResNet-50 baselines at 448; the paper's VGG-19: 83.7%).

    python -m deep_image.tools.import_weights --variant=resnet50 resnet50-11ad3fa6.pth \\
        runs/resnet50_torchvision
    python -m deep_image.train --config=experiments/cub_resnet50_448.py \\
        --workdir=runs/cub_resnet50_448
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib

CROP = 448          # the fine-grained literature's ResNet-50 resolution


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("cub", variant="resnet50", scale=512, crop=CROP,
                                finetune="all", init_from="runs/resnet50_torchvision")
    c.eval.scales = (448, 512, 576)     # dense testing from the crop size up
    c.eval_batch_size = 32
    return config_lib.lock(c)
