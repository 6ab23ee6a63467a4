"""ILSVRC-2012 pre-training of VGG-19 at 512x512 (§4.2, §5.1).

Target: the high-resolution member of the CUB ensemble.

    python -m deep_image.train --config=experiments/ilsvrc_vgg19_512.py --workdir=runs/ilsvrc_vgg19_512
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("ilsvrc", variant="vgg19", scale=512, finetune="all",
                                init_from="", width=1.0)
    return config_lib.lock(c)
