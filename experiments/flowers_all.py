"""Oxford 102 Flowers (§5.2): all layers of VGG-19 fine-tuned, without the segmentations.

Target: 98.73% mean accuracy with multi-scale testing.

    python -m deep_image.train --config=experiments/flowers_all.py --workdir=runs/flowers_all
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("flowers", variant="vgg19", scale=256, finetune="all",
                                init_from="runs/ilsvrc_vgg19_256", width=1.0)
    return config_lib.lock(c)
