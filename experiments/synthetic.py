"""The main job: a narrow VGG-16 on the embedded SynthBirds benchmark, on CPU, in minutes.

    python -m deep_image.train --config=experiments/synthetic.py --workdir=/tmp/deep_image/synthetic

16 classes (chance 6.25%). Images are rendered at 128x128, resized to 64x64 and cropped to 56x56
(the paper's 256 -> 224 ratio, §5.1); width 1/4 of VGG-16. `arg` variants:
  "scale=N"  resize to NxN (crop stays 7/8 of it), e.g. `experiments/synthetic.py:scale=128`.
"""

from deep_image import config as config_lib


def get_config(arg: str | None = None):
    args = dict(kv.split("=") for kv in arg.split(",")) if arg else {}
    c = config_lib.base()
    c.model.variant = "vgg16"
    c.model.width = 0.25
    c.data.source = "synthetic"
    c.data.scale = int(args.get("scale", 64))
    c.data.crop = c.data.scale * 7 // 8
    c.batch_size = 32
    c.eval_batch_size = 250
    c.num_epochs = 6
    c.log_every_steps = 25
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.schedule.patience = 1
    c.schedule.warmup_steps = 200
    return config_lib.lock(c)
