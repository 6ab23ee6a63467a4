"""ILSVRC-2012 pre-training of VGG-16 at 256x256 (§4.2, §5.1).

Target: the paper reports ILSVRC only for its ensemble (§5.4); this run is the 256 baseline
of the 256-vs-512 comparison.

    python -m deep_image.train --config=experiments/ilsvrc_vgg16_256.py --workdir=runs/ilsvrc_vgg16_256
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("ilsvrc", variant="vgg16", scale=256, finetune="all",
                                init_from="", width=1.0)
    return config_lib.lock(c)
