"""The runs of the claims study (python -m deep_image.reproduce; deep_image/study/design.py).

Target: the paper's qualitative claims (§4.1, §4.2, §5.1, §5.2, §5.5) on SynthBirds, with
blocked replicates and pre-registered verdicts; docs/claims/claims.md has the rule and results.

The paper's regime, scaled to a CPU: pre-train on a large task (SynthBirds species C: 8,000
images of 32 classes, each one of the target's markings with one of species B's, so that no
class is a target class but every target marking is learnt, as ILSVRC's birds teach CUB's
parts, never its species; data/synthetic.py), then fine-tune
on a scarce target (species A: 1,920 training images, 120 per class; CUB-200 has 30, Indoor 80),
the augmentations on in both stages (§5.1). The target's birds span 0.2-0.7 of the image side, so
some are small (§4.2); the pre-training birds are 0.45-0.7 (ImageNet's objects are large too).

Pilot round 1 pre-trained on species B (16 classes with markings of their own): its features
gave 32% with the classifier alone and ~50% fine-tuned (docs/claims/pilot/round1). Round 2
(species C): fine-tuned validation 63-65%, the same at learning rates 0.001, 0.003 and 0.01
(docs/claims/pilot): below the 80-95% a fine-grained study wants. Round 3, after the study
(docs/claims/pilot/round3): 4x the images and 3x the steps reach 78%, and no more with more
images; at 64-pixel crops the level stops there, and 3x the steps would not fit the budget.
Round 4 (docs/claims/pilot/round4): fine-tuning at 96-pixel crops of 108-pixel images, from the
net pre-trained at 64, with 1,920 target images reached 83% at the study's 600 steps: the
recipe here since (the 64-pixel study, 480 target images: docs/claims/study_64px).

The net is ResNet-18 at width 1/4 (BatchNorm), not the paper's VGG: on this CPU, VGG-11 at
width 1/4 sat at chance for 1,000-2,000 pre-training steps on some seeds (the previous study),
and ResNet-18 takes a step 1.6x faster (pilot, docs/claims/pilot). No run's schedule depends
on its own validation noise: every stage has a fixed schedule (linear warm-up, then the
§5.1 division by ten at fixed steps), the same for every arm; validation is evaluated and
logged, never acted on (config.schedule.plateau = False). Classifiers start at zero.

    python -m deep_image.train --config=experiments/claims.py:stage=pretrain,seed=10 \\
        --workdir=runs/claims/runs/pretrain_p10
    python -m deep_image.train --config=experiments/claims.py:stage=finetune,aug=all6,seed=20 \\
        --workdir=runs/claims/runs/all6_p10_f20 --config.init_from=runs/claims/runs/pretrain_p10

ARG, comma separated:
  stage=pretrain|finetune|scratch   scratch: the fine-tuning run from random weights
  aug=all6|cropflip                 the six §4.1 augmentations, or crop + flip only
  capture=0|low|N                   0: images as rendered (128 px, shown at 108); low: taken
                                    by a camera of half the resolution (54 px; §4.2's 256 vs
                                    512); N: a camera of N pixels
  finetune=all|last                 which layers fine-tune (§5.2)
  seed=N                            initialisation, data order, augmentation draws
  budget=full|quick|toy             full: the study; quick: a shorter one; toy: tests only
"""

from deep_image import config as config_lib

# Steps, fixed divisions (§5.1's factor of ten), warm-up, evaluation cadence per budget.
# Fine-tuning: 1,920 images are 60 steps of 32.
BUDGETS = {
    "full": {"pretrain_steps": 4000, "pretrain_decays": (3000, 3600), "pretrain_warmup": 200,
             "pretrain_eval": 250, "finetune_steps": 600, "finetune_decays": (400, 520),
             "finetune_eval": 60, "test_size": 2000},
    # quick: 2,500 pre-training steps (1,500 ended at 58.4% and 54.7%, below the gate, with
    # seeds 30-31: docs/claims/study_64px/quick/README.md; the full runs pass 70% at step 2,500)
    "quick": {"pretrain_steps": 2500, "pretrain_decays": (1900, 2250), "pretrain_warmup": 100,
              "pretrain_eval": 250, "finetune_steps": 300, "finetune_decays": (200, 260),
              "finetune_eval": 60, "test_size": 1000},
    "toy": {"pretrain_steps": 12, "pretrain_decays": (8,), "pretrain_warmup": 0,
            "pretrain_eval": 4, "finetune_steps": 8, "finetune_decays": (6,),
            "finetune_eval": 4, "test_size": 48},
}
# Pre-training: 64-pixel crops of 72-pixel images (8:7, as the paper's 224 of 256).
PRETRAIN_CROP, PRETRAIN_SCALE = 64, 72
# Fine-tuning (and scratch): 96 of 108, the same 8:7, from the net pre-trained at 64 (a fully
# convolutional net with global pooling takes either). Pilot round 4 (docs/claims/pilot/round4):
# 96-pixel crops and 1,920 target images lifted fine-tuned validation top-1 from ~63% (the
# 64-pixel study's recipe) to 83% on a pilot seed, within the study's budget.
CROP, SCALE = 96, 108     # a multiple of 32, as the dense protocol's crops
TEST_SCALES = (SCALE, SCALE * 4 // 3, SCALE * 16 // 9)   # dense multi-scale testing (§5.1)
TARGET_IMAGES = 1920      # species A training images: 120 per class


def get_config(arg: str | None = None):
    args = dict(kv.partition("=")[::2] for kv in arg.split(",")) if arg else {}
    unknown = set(args) - {"stage", "aug", "capture", "finetune", "seed", "budget"}
    if unknown:
        raise ValueError(f"experiments/claims.py: unknown argument(s) {sorted(unknown)}; see "
                         "the module's docstring")
    stage = args.get("stage", "finetune")
    budget = BUDGETS[args.get("budget", "full")]
    toy = args.get("budget") == "toy"
    c = config_lib.base()
    c.seed = int(args.get("seed", 0))
    c.model.name, c.model.variant = "resnet", "resnet18"
    c.model.width = 1 / 16 if toy else 0.25
    c.model.head_init = "zeros"
    s = c.data.synthetic
    s.native_size, s.object_scale = (48 if toy else 128), (0.2, 0.7)
    c.data.crop = 32 if toy else CROP
    c.data.scale = 36 if toy else SCALE
    capture = args.get("capture", "0")      # low: half the resolution (54 px at 108)
    c.data.capture_size = c.data.scale // 2 if capture == "low" else int(capture)
    c.data.cache = True
    c.data.augment.update(config_lib.all_six() if args.get("aug", "all6") == "all6" else {})
    c.eval.protocol, c.eval.flip = "dense", True
    c.eval.scales = (36, 40, 48) if toy else TEST_SCALES
    c.batch_size, c.eval_batch_size = (16, 16) if toy else (32, 250)
    c.log_every_steps = 4 if toy else 20
    c.progress_bar = False
    c.curves_on_eval_split = False     # the test split is touched once, at the end
    c.schedule.plateau = False         # fixed schedules: no decision reads validation noise
    if stage == "pretrain":           # the "ILSVRC" of the study: species C, many images
        s.species, s.num_classes, s.object_scale = "C", 32, (0.45, 0.7)
        s.train_size, s.val_size, s.test_size = (64, 32, 32) if toy else (8000, 1000, 500)
        if not toy:
            c.data.crop, c.data.scale = PRETRAIN_CROP, PRETRAIN_SCALE
        c.total_steps = budget["pretrain_steps"]
        c.schedule.decay_steps = budget["pretrain_decays"]
        c.schedule.warmup_steps = budget["pretrain_warmup"]
        c.eval_every_steps = c.checkpoint_every_steps = budget["pretrain_eval"]
    else:                             # the scarce target: species A, 120 images per class
        s.species = "A"
        s.train_size, s.val_size = (48, 32) if toy else (TARGET_IMAGES, 800)
        s.test_size = budget["test_size"]
        c.total_steps = budget["finetune_steps"]
        c.schedule.decay_steps = budget["finetune_decays"]
        c.eval_every_steps = c.checkpoint_every_steps = budget["finetune_eval"]
        c.finetune = args.get("finetune", "all") if stage == "finetune" else "all"
    return config_lib.lock(c)
