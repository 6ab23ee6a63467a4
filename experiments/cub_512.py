"""CUB-200-2011 (§4.2, §5.2): all layers of VGG-16 fine-tuned from ILSVRC at 512x512.

Target: 81.6% top-1; 84.9% ensembled with cub_256.

    python -m deep_image.train --config=experiments/cub_512.py --workdir=runs/cub_512
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("cub", variant="vgg16", scale=512, finetune="all",
                                init_from="runs/ilsvrc_vgg16_512", width=1.0)
    return config_lib.lock(c)
