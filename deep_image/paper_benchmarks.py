"""What each of the paper's benchmarks needs in a config (§5), shared by experiments/*.py.

`paper_config(benchmark, ...)` returns the base config set up for one benchmark: its source and
splits, the paper's evaluation metric (the "headline"), the multi-scale + flip dense test
protocol (§5.1), the six augmentations on (§5.1: "Our aggressive data augmentations are used for
both pretraining and fine-tuning"), and the fine-tuning mode. Experiment files then set the
model, scale and learning rate and quote the number they target.
"""

from __future__ import annotations

import json
import os

from deep_image import config as config_lib
from deep_image import constants
from deep_image.config import ConfigError

# benchmark -> (source, train split, val split, eval split, headline metric). The val split is
# the only one that feeds decisions (the §5.1 schedule watches its headline metric); the eval
# split is reported. Official validation splits where the dataset has one (Flowers, Aircraft);
# otherwise a class-stratified holdout of the training split (data/splits.py): 10% per class
# for the fine-grained sets, 10 images per class for ILSVRC ("minival", as big_vision).
BENCHMARKS = {
    "ilsvrc": ("imagenet", "train[10:]", "train[:10]", "validation", "top5_error"),
    "cub": ("cub", "train[10%:]", "train[:10%]", "test", "top1"),
    "flowers": ("flowers102", "train", "validation", "test", "mean_per_class"),
    "pets": ("pets", "train[10%:]", "train[:10%]", "test", "mean_per_class"),
    "aircraft": ("aircraft", "train", "val", "test", "mean_per_class"),
    "indoor": ("indoor67", "train[10%:]", "train[:10%]", "test", "top1"),
}
TEST_SCALES = (256, 384, 512)   # §5.1 multi-scale testing; each must be >= the 224 crop


# ResNet's one FC layer, split by output columns when the head is split (§3.2's model_data)
RESNET_SHARDING_RULES = ((r"^fc/kernel$", (None, "model")), (r"^fc/bias$", ("model",)))


def paper_config(benchmark: str, *, variant: str, scale: int, finetune: str = "all",
                 init_from: str = "", width: float = 1.0, crop: int = constants.CROP_SIZE):
    source, train, val, test, headline = BENCHMARKS[benchmark]
    c = config_lib.base()
    c.model.name = "resnet" if variant.startswith("resnet") else "vgg"
    c.model.variant, c.model.width = variant, width
    if c.model.name == "resnet":
        c.sharding_rules = RESNET_SHARDING_RULES
    c.model.dtype = "bfloat16"          # GPU runs; parameters stay float32
    c.data.source = source
    c.data.train_split, c.data.val_split, c.data.eval_split = train, val, test
    c.data.scale, c.data.crop = scale, crop
    c.data.augment.update(config_lib.all_six())
    c.eval.protocol, c.eval.scales, c.eval.flip = "dense", TEST_SCALES, True
    c.eval.headline = headline
    c.init_from, c.finetune = init_from, finetune
    c.batch_size = 256
    c.eval_batch_size = 64              # whole 512x512 images at test time
    c.log_every_steps = 100
    if benchmark == "ilsvrc":
        c.num_epochs = 90
        c.eval_every_steps = c.checkpoint_every_steps = 5000
        c.schedule.patience = 2
    else:   # fine-tuning sets are small: evaluate (and maybe divide the rate) every ~2 epochs
        c.num_epochs = 60
        c.eval_every_steps = c.checkpoint_every_steps = 50
        c.schedule.patience = 3
    return c


def recorded_decay_steps(workdir: str) -> tuple[tuple[int, ...], int]:
    """(steps at which the plateau schedule of the run in `workdir` divided the rate, its last
    step): to retrain on train+val with the schedule the train/val run chose on validation."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ConfigError(f"no {path}: train the train/val run first, then retrain on trainval")
    decays, scale, last = [], 1.0, 0
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            last = max(last, record["step"])
            if "schedule/lr_scale" in record:
                if record["schedule/lr_scale"] < scale:
                    decays.append(int(record["step"]))
                scale = record["schedule/lr_scale"]
    return tuple(decays), last


def retrain_on_trainval(c, workdir: str):
    """`c` switched to train+val with no validation split, replaying the decay steps and the
    length of the train/val run in `workdir` (FGVC-Aircraft's trainval option)."""
    c.data.train_split, c.data.val_split = "trainval", ""
    c.schedule.decay_steps, c.total_steps = recorded_decay_steps(workdir)
    return c
