"""ILSVRC-2012 pre-training of VGG-16 at 512x512 (§4.2): high-resolution images, 224 crops.

Target: §4.2: high-resolution models complement low-resolution ones.

    python -m deep_image.train --config=experiments/ilsvrc_vgg16_512.py --workdir=runs/ilsvrc_vgg16_512
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("ilsvrc", variant="vgg16", scale=512, finetune="all",
                                init_from="", width=1.0)
    return config_lib.lock(c)
