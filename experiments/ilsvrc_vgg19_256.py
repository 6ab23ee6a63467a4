"""ILSVRC-2012 pre-training of VGG-19 at 256x256 (§5.1, Figure 8b).

Target: the basis of the Flowers, Pets, Aircraft and Indoor fine-tuning.

    python -m deep_image.train --config=experiments/ilsvrc_vgg19_256.py --workdir=runs/ilsvrc_vgg19_256
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("ilsvrc", variant="vgg19", scale=256, finetune="all",
                                init_from="", width=1.0)
    return config_lib.lock(c)
