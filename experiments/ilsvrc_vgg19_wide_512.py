"""A "larger" VGG-19 (§5.1: "most of them are larger"): 1.5x the conv and FC widths, at 512x512.

Target: the paper gives no widths; 1.5x is our choice.

    python -m deep_image.train --config=experiments/ilsvrc_vgg19_wide_512.py --workdir=runs/ilsvrc_vgg19_wide_512
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("ilsvrc", variant="vgg19", scale=512, finetune="all",
                                init_from="", width=1.5)
    return config_lib.lock(c)
