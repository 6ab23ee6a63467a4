"""Oxford 102 Flowers (§5.2): VGG-19 as an off-the-shelf feature extractor, only the softmax layer
fine-tuned.

Target: 96.1% mean accuracy.

    python -m deep_image.train --config=experiments/flowers_last.py --workdir=runs/flowers_last
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("flowers", variant="vgg19", scale=256, finetune="last",
                                init_from="runs/ilsvrc_vgg19_256", width=1.0)
    return config_lib.lock(c)
