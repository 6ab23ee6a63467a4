"""MIT Indoor 67 (§5.3): the last three FC layers of VGG-19 fine-tuned on the 5,360 training
images.

Target: 82.4% accuracy with multi-scale testing.

    python -m deep_image.train --config=experiments/indoor_fc.py --workdir=runs/indoor_fc
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("indoor", variant="vgg19", scale=256, finetune="fc",
                                init_from="runs/ilsvrc_vgg19_256", width=1.0)
    return config_lib.lock(c)
