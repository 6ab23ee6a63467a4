"""The main job: a narrow VGG on the embedded SynthBirds benchmark, on CPU, in minutes.

    python -m deep_image.train --config=experiments/synthetic.py --workdir=runs/synthetic

16 classes (chance 6.25%) that differ only in small markings of the bird. Images are rendered
at 128x128, resized to 64x64 and cropped to 56x56 (the paper's 256 -> 224 ratio, §5.1). The
model is the 8-conv + 3-FC VGG of the paper's §3.3 scaling test at 1/4 width; SGD with
momentum from learning rate 0.01, divided by ten when validation accuracy stops increasing
(§5.1). Variants, as `--config=experiments/synthetic.py:ARG` with comma-separated ARG:
  scale=N      resize to NxN instead of 64 (the crop stays 7/8 of it): the §4.2 experiment
  variant=V    vgg11 | vgg16 | vgg19
  tiny         a seconds-long smoke run (tests use it)
"""

from deep_image import config as config_lib


def get_config(arg: str | None = None):
    args = dict(kv.partition("=")[::2] for kv in arg.split(",")) if arg else {}
    c = config_lib.base()
    c.model.variant = args.get("variant", "vgg11")
    c.model.width = 0.25
    c.data.source = "synthetic"
    c.data.scale = int(args.get("scale", 64))
    c.data.crop = c.data.scale * 7 // 8
    c.data.cache = True
    c.batch_size = 32
    c.eval_batch_size = 250
    c.num_epochs = 9
    c.log_every_steps = 25
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.schedule.patience = 1
    c.schedule.warmup_steps = 200
    if "tiny" in args:
        c.model.width = 1 / 16
        c.data.scale, c.data.crop = 40, 32
        c.data.synthetic.native_size = 48
        c.data.synthetic.train_size = 256
        c.data.synthetic.val_size = 40
        c.data.synthetic.test_size = 50
        c.data.threads = 2
        c.batch_size = 16
        c.eval_batch_size = 16
        c.total_steps = 40
        c.log_every_steps = 5
        c.eval_every_steps = 20
        c.checkpoint_every_steps = 10
        c.schedule.warmup_steps = 0
        c.progress_bar = False
    return config_lib.lock(c)
