"""Oxford-IIIT Pets (§5.2): the last three FC layers of the best single model fine-tuned, learning
rate 0.001 then 0.0001.

Target: 93.1% mean per-class accuracy with multi-scale testing.

    python -m deep_image.train --config=experiments/pets_fc.py --workdir=runs/pets_fc
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib
from deep_image import constants


def get_config(arg=None):
    del arg
    c = paper_benchmarks.paper_config("pets", variant="vgg19", scale=256, finetune="fc",
                                init_from="runs/ilsvrc_vgg19_256", width=1.0)
    c.optimizer.learning_rate = constants.PETS_LEARNING_RATE
    c.schedule.min_scale = constants.PETS_FINAL_LEARNING_RATE / constants.PETS_LEARNING_RATE
    return config_lib.lock(c)
