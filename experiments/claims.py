"""The runs of the claims study (python -m deep_image.reproduce; deep_image/study/claims.py).

Target: the paper's qualitative claims (§4.1, §4.2, §5.1, §5.2, §5.5) on SynthBirds, each with
several seeds and a 95% interval; docs/claims.md has the verdicts.

The paper's regime, scaled to a CPU: pre-train on a large task (SynthBirds species B: 8,000
images of 16 classes with their own markings, no class shared with the target), then fine-tune
on a scarce target (species A: 480 training images, 30 per class as in CUB-200), the
augmentations on in both stages (§5.1). The target's birds span 0.2-0.7 of the image side, so
some are small (§4.2); the pre-training birds are the benchmark's 0.45-0.7 (ImageNet's objects
are large too). Every stage trains with the §5.1 schedule: 0.01, divided by ten when the
validation split's top-1 stops improving (patience 2; no decision in the first 1,500
pre-training or 300 fine-tuning steps, while a net may still sit at chance level); the reported
test split is evaluated once, at the end. Classifiers start at zero (config.model.head_init).

    python -m deep_image.train --config=experiments/claims.py:stage=pretrain,seed=0 \\
        --workdir=runs/claims/pretrain_s0
    python -m deep_image.train --config=experiments/claims.py:stage=finetune,aug=all6,seed=0 \\
        --workdir=runs/claims/all6_s0 --config.init_from=runs/claims/pretrain_s0

ARG, comma separated:
  stage=pretrain|finetune|scratch   scratch: the fine-tuning run from random weights
  aug=all6|cropflip                 the six §4.1 augmentations, or crop + flip only
  scale=72|128                      resize before the 64-pixel crop (§4.2: 256 vs 512, 224 crops)
  finetune=all|fc|last              which layers fine-tune (§5.2)
  seed=N                            initialisation, data order, augmentation draws, dropout
  budget=full|quick|toy             full: the study; quick: a shorter one; toy: tests only
"""

from deep_image import config as config_lib

# Steps and evaluation cadence per budget. Fine-tuning: 480 images are 15 steps of 32.
BUDGETS = {   # hold: no plateau decision before this step (a net at chance is not on one)
    "full": {"pretrain_steps": 4000, "pretrain_eval": 250, "pretrain_hold": 1500,
             "finetune_steps": 900, "finetune_eval": 45, "finetune_hold": 300,
             "test_size": 2000},
    "quick": {"pretrain_steps": 1000, "pretrain_eval": 125, "pretrain_hold": 500,
              "finetune_steps": 300, "finetune_eval": 30, "finetune_hold": 100,
              "test_size": 1000},
    "toy": {"pretrain_steps": 12, "pretrain_eval": 4, "pretrain_hold": 0, "finetune_steps": 8,
            "finetune_eval": 4, "finetune_hold": 0, "test_size": 48},
}
CROP = 64                 # a multiple of 32: the dense (FC-as-conv) net equals the trained one
SCALES = (72, 128)        # low and high training resolution; 72 keeps the paper's 8:7 ratio
TEST_SCALES = (72, 96, 128)   # dense multi-scale testing (§5.1)


def get_config(arg: str | None = None):
    args = dict(kv.partition("=")[::2] for kv in arg.split(",")) if arg else {}
    stage = args.get("stage", "finetune")
    budget = BUDGETS[args.get("budget", "full")]
    toy = args.get("budget") == "toy"
    c = config_lib.base()
    c.seed = int(args.get("seed", 0))
    c.model.variant, c.model.width = "vgg11", (1 / 16 if toy else 0.25)
    c.model.head_init = "zeros"
    s = c.data.synthetic
    s.native_size, s.object_scale = (48 if toy else 128), (0.2, 0.7)
    c.data.crop = 32 if toy else CROP
    c.data.scale = int(args.get("scale", 36 if toy else SCALES[0]))
    c.data.cache = True
    c.data.augment.update(config_lib.all_six() if args.get("aug", "all6") == "all6" else {})
    c.eval.protocol, c.eval.flip = "dense", True
    c.eval.scales = (36, 40, 48) if toy else TEST_SCALES
    c.batch_size, c.eval_batch_size = (16, 16) if toy else (32, 250)
    c.log_every_steps = 4 if toy else 25
    c.progress_bar = False
    c.curves_on_eval_split = False     # the test split is touched once, at the end
    if stage == "pretrain":           # the "ILSVRC" of the study: species B, many images
        s.species, s.object_scale = "B", (0.45, 0.7)
        s.train_size, s.val_size, s.test_size = (64, 32, 32) if toy else (8000, 1000, 500)
        c.total_steps = budget["pretrain_steps"]
        c.eval_every_steps = c.checkpoint_every_steps = budget["pretrain_eval"]
        c.schedule.warmup_steps = 0 if toy else 200
        c.schedule.patience = 2
        c.schedule.decide_after_step = budget["pretrain_hold"]
    else:                             # the scarce target: species A, 30 images per class
        s.species = "A"
        s.train_size, s.val_size = (48, 32) if toy else (480, 800)
        s.test_size = budget["test_size"]
        c.total_steps = budget["finetune_steps"]
        c.eval_every_steps = c.checkpoint_every_steps = budget["finetune_eval"]
        c.schedule.patience = 2
        c.schedule.decide_after_step = budget["finetune_hold"]
        c.finetune = args.get("finetune", "all") if stage == "finetune" else "all"
    return config_lib.lock(c)
