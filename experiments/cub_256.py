"""CUB-200-2011 (§4.2, §5.2): all layers of VGG-19 fine-tuned from ILSVRC at 256x256 (the paper
pairs its 19-layer model with 256 and its 16-layer model with 512).

Target: 83.7% top-1; with cub_512, 84.9% ensembled (python -m deep_image.ensemble); 85.6% with
the box at test time (--config.eval.bbox=True).

    python -m deep_image.train --config=experiments/cub_256.py --workdir=runs/cub_256
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("cub", variant="vgg19", scale=256, finetune="all",
                                init_from="runs/ilsvrc_vgg19_256", width=1.0)
    return config_lib.lock(c)
