"""FGVC-Aircraft 2013b variants (§5.2): all layers of VGG-19 fine-tuned, no boxes.

Target: 85.17% mean per-class accuracy.

Trained on `train`, the schedule decided on the official `val`, reported on `test`:

    python -m deep_image.train --config=experiments/aircraft_all.py --workdir=runs/aircraft_all

Then, optionally, retrain on `trainval` (the paper's split strategy [20]) with no validation
split: the rate is divided at the steps the train/val run chose, for as many steps:

    python -m deep_image.train --config=experiments/aircraft_all.py:trainval=runs/aircraft_all \
        --workdir=runs/aircraft_all_trainval
"""

from deep_image import paper_benchmarks
from deep_image import config as config_lib


def get_config(arg=None):
    args = dict(kv.partition("=")[::2] for kv in arg.split(",")) if arg else {}
    c = paper_benchmarks.paper_config("aircraft", variant="vgg19", scale=256, finetune="all",
                                init_from="runs/ilsvrc_vgg19_256", width=1.0)
    if args.get("trainval"):
        paper_benchmarks.retrain_on_trainval(c, args["trainval"])
    return config_lib.lock(c)
