"""FGVC-Aircraft 2013b variants (§5.2): all layers of VGG-19 fine-tuned, no boxes.

Target: 85.17% mean per-class accuracy.

    python -m deep_image.train --config=experiments/aircraft_all.py --workdir=runs/aircraft_all
"""

from deep_image import benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = benchmarks.paper_config("aircraft", variant="vgg19", scale=256, finetune="all",
                                init_from="runs/ilsvrc_vgg19_256", width=1.0)
    return config_lib.lock(c)
