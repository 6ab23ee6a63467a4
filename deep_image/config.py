"""The base experiment config and its checks.

Every experiment file in `experiments/` is a `get_config(arg)` that starts from `base()`, changes
what it needs and returns `lock(config)`: after that a misspelled `--config.key=value` is an error.
Every key a run may read exists here with a comment; paper numbers come from `constants`.
"""

from __future__ import annotations

import os

import ml_collections

from deep_image import constants

MODEL_DTYPES = ("float32", "bfloat16")
HEADLINES = ("top1", "mean_per_class", "top5_error")
FINETUNE_MODES = ("all", "fc", "last")
PARALLELISMS = ("data", "model_data")


class ConfigError(ValueError):
    """A config that cannot run: the message names the key and what to do."""


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                         # parameters, data order, augmentation and dropout

    c.model = ml_collections.ConfigDict()
    c.model.name = "vgg"               # the family: a module of deep_image/models (vgg, resnet)
    c.model.variant = "vgg16"          # vgg: vgg11 | vgg16 | vgg19 (§5.1, Figure 8); resnet:
                                       # resnet18 | resnet50
    c.model.width = 1.0                # multiplies every conv and FC width; >1: "larger" models
    c.model.dtype = "float32"          # compute dtype: float32 | bfloat16; parameters stay float32
    c.model.dropout_rate = constants.DROPOUT_RATE
    c.model.head_init = "he"           # the classifier's initial weights: he | zeros
    # none | blocks: keep only each block's output for the backward pass (VGG block, ResNet
    # residual block) and recompute inside it (models/base.py): less activation memory for
    # about one more forward pass
    c.model.remat = "none"

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"        # see deep_image.data.sources.SOURCES
    c.data.root = ""                   # dataset directory, for sources read from disk
    # Splits (data/splits.py: a dataset's own split, or a per-class slice like train[:10%]).
    # Only val_split feeds decisions (the §5.1 schedule); eval_split is the reported split,
    # evaluated during training for curves only. The three must not overlap (config.check).
    c.data.train_split = "train"
    c.data.val_split = "val"           # "": none; no plateau decisions (see schedule)
    c.data.eval_split = "test"         # reported: periodic curves and the final result
    c.data.scale = constants.TRAIN_SCALES[0]   # images are resized to scale x scale (§4.2)
    c.data.crop = constants.CROP_SIZE          # then cropped to crop x crop (§5.1)
    c.data.resize = "square"           # square: scale x scale (§4.2); shorter_side: keep aspect
    # 0: images as stored. N: every image of every split is first reduced to N pixels on its
    # shorter side (area averaging), as a camera of lower resolution would take it, then
    # resized to `scale` as usual: less detail at the same field of view and the same network
    # (the claims study's low-resolution arm, §4.2)
    c.data.capture_size = 0
    # §4.1 augmentations (deep_image/data/augment.py has the Table 1 spaces). All but cropping
    # act on the crop. "No augmentation", "crop + flip" and "all six" are switches here.
    c.data.augment = ml_collections.ConfigDict()
    c.data.augment.crop = True         # random crop at training (else the centre crop)
    c.data.augment.flip = True         # horizontal flip, probability 1/2
    c.data.augment.rotation = False    # one of +-1..10 degrees
    c.data.augment.rotation_prob = 0.5
    c.data.augment.lens_distortion = False   # barrel/pincushion/stretch, 65 degrees each
    c.data.augment.lens_prob = 0.5
    c.data.augment.color_cast = False  # per channel with probability 1/2: +-1..20 (§4.1)
    c.data.augment.color_cast_channel_prob = 0.5
    c.data.augment.vignetting = False  # darkening from one of 40 radii by one of 49 strengths
    c.data.augment.vignetting_prob = 0.5
    c.data.mean = (0.485, 0.456, 0.406)   # per-channel normalization on device, RGB in [0, 1]
    c.data.std = (0.229, 0.224, 0.225)
    # Host parallelism (data/pipeline.py): -1 derives both from the CPUs this process may use
    # (affinity, SLURM's CPUs per task): on a GPU node one Grain worker per CPU but one, 2
    # read threads each; with the step on the CPU no workers and a thread per CPU.
    c.data.workers = -1                # Grain worker processes (0: decode in this process)
    c.data.threads = -1                # Grain read threads per process
    c.data.prefetch = 2                # batches buffered per worker
    c.data.device_prefetch = 2         # batches put on the devices ahead of the step (0: none)
    c.data.cache = False               # keep resized training images in memory (§3.1)
    # §3.1: "use device memory to cache the training data" (data/device_cache.py). host: the
    # Grain pipeline augments on the host; device: the training split decoded and resized once
    # into device memory (replicated if it fits, else split over the devices), crops and the
    # six augmentations drawn and applied in the train step (data/device_augment.py)
    c.data.placement = "host"
    c.data.device_memory = 0           # bytes per device the cache plans with (0: what the
                                       # device reports; CPU: the host's available memory)
    c.data.device_cache_share = 0.5    # of the memory left after the state (the rest: the
                                       # step's activations and temporaries)
    c.data.synthetic = ml_collections.ConfigDict()   # the embedded benchmark (data/synthetic.py)
    c.data.synthetic.num_classes = 16
    c.data.synthetic.native_size = 128
    c.data.synthetic.train_size = 12_000
    c.data.synthetic.val_size = 1_000
    c.data.synthetic.test_size = 2_000
    c.data.synthetic.seed = 0
    c.data.synthetic.object_scale = (0.45, 0.7)   # bird length / image side
    c.data.synthetic.clutter = 8                  # distractor strokes per image
    c.data.synthetic.species = "A"                # A: the benchmark; B: other markings
    c.data.synthetic.prerendered = ""             # a directory of synthetic.prerender files

    # The test protocol of `python -m deep_image.evaluate` / ensemble / predict (§5.1).
    # Periodic evaluation during training always uses the quick single centre crop.
    c.eval = ml_collections.ConfigDict()
    c.eval.protocol = "center_crop"    # center_crop | dense (fully convolutional, whole image)
    c.eval.scales = ()                 # dense: test scales, e.g. (256, 384, 512); (): data.scale
    c.eval.flip = False                # also score the mirrored image, average the posteriors
    c.eval.bbox = False                # crop to the dataset's box at test time (CUB "Ours+BBox")
    c.eval.headline = "top1"           # top1 | mean_per_class | top5_error: the paper's metric
    c.eval.use_ema = False             # evaluate (and let the schedule read) the weights' EMA
                                       # (needs config.ema_decay > 0)

    c.batch_size = 256                 # global, over all devices and hosts
    # Gradient accumulation: each update is the update of the whole batch, computed as this
    # many micro-batches one after another on every device (their gradients summed before the
    # one butterfly sync): activation memory of batch_size / accumulate_steps
    c.accumulate_steps = 1
    c.eval_batch_size = 256
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = constants.LEARNING_RATE
    c.optimizer.momentum = constants.MOMENTUM
    c.optimizer.weight_decay = constants.WEIGHT_DECAY
    c.optimizer.nesterov = False
    c.optimizer.grad_clip_norm = 0.0   # 0: off
    # An exponential moving average of the weights, updated after every step (timm's
    # --model-ema): ema = decay x ema + (1 - decay) x weights; kept in the train state and the
    # checkpoint. 0: none. Typical: 0.999 (a window of ~1,000 steps)
    c.ema_decay = 0.0

    # §5.1: divide the learning rate by ten when validation accuracy stops increasing. The
    # schedule watches config.eval.headline (the benchmark's own metric) on data.val_split.
    # Without a val split the rate is constant but for decay_steps.
    c.schedule = ml_collections.ConfigDict()
    c.schedule.plateau = True          # False: no plateau decisions (validation is still
                                       # evaluated and logged); the rate follows decay_steps
    c.schedule.factor = constants.LR_DECAY_FACTOR
    c.schedule.patience = 2            # evaluations without improvement before dividing
    c.schedule.cooldown = 0            # evaluations to wait after a division
    c.schedule.rtol = 1e-4             # relative improvement in error that counts
    c.schedule.min_scale = 1e-3        # floor: the rate never goes below min_scale * lr
    c.schedule.warmup_steps = 0        # linear warm-up from 0 (0: none)
    c.schedule.decide_after_step = 0   # no plateau decision before this step (a net still at
                                       # chance level is not on a plateau)
    # Fixed divisions by `factor` at these steps (e.g. a plateau schedule recorded on a
    # train/val run, replayed when retraining on train+val: paper_benchmarks.recorded_decay_steps)
    c.schedule.decay_steps = ()

    # Fine-tuning (§5): start from another run's weights; which layers train.
    c.init_from = ""                   # a workdir (its latest checkpoint) or a checkpoint dir
    c.finetune = "all"                 # all | fc (the last three FC layers) | last (classifier)

    c.total_steps = 0                  # 0: derived from num_epochs
    c.num_epochs = 90.0
    c.log_every_steps = 50
    c.eval_every_steps = 1000          # also where the schedule looks at validation accuracy
    c.curves_on_eval_split = True      # also score the reported split then (curves only;
                                       # False: only at the end)
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True

    # Parallelism over the mesh (§3): axis name -> size, -1 takes the rest; the batch is split
    # over every device. "data" (§3.1): every device computes with all weights; gradients
    # synchronize by the butterfly (reduce-scatter to owners) and the updated weights are
    # gathered lazily. "model_data" (§3.2): conv layers as "data"; FC weights split by
    # `sharding_rules` over the `model` axis and data parallel over `data` (the hybrid), or,
    # when model is 1, over all the data devices as in the paper (parallel/layout.py).
    c.mesh = (("data", -1), ("model", 1))
    c.parallelism = "data"
    # Leaves of fewer elements than this (biases, BatchNorm scales, per device) are kept whole
    # on every device that holds a copy, instead of 1/N parts each: their gradient is one
    # all-reduce (XLA combines the small ones) and the lazy update gathers nothing for them.
    c.whole_below = 1 << 16
    # Where parameters live, as (regex over "layer/param" paths, PartitionSpec entries) rules,
    # first match wins, unmatched leaves replicated. Conv layers must stay replicated (data
    # parallel); an FC kernel is split by output columns (None, "model") or input rows
    # ("model", None), and its bias split exactly when its columns are. Only model_data reads
    # the FC entries. Default: FC1 by columns, FC2 and FC3 by rows, so FC1's slice feeds FC2's.
    c.sharding_rules = (
        (r"^conv", ()),
        (r"^fc1/kernel$", (None, "model")),
        (r"^fc1/bias$", ("model",)),
        (r"^fc[23]/kernel$", ("model", None)),
        (r"^fc[23]/bias$", ()),
    )
    return c


AUGMENTATIONS = ("crop", "flip", "rotation", "lens_distortion", "color_cast", "vignetting")


def all_six(augment: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """A copy of `augment` (default: base()'s) with all six §4.1 augmentations on."""
    aug = ml_collections.ConfigDict((augment or base().data.augment).to_dict())
    for name in AUGMENTATIONS:
        aug[name] = True
    return aug


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.lock()
    return config


def check(config: ml_collections.ConfigDict) -> None:
    """Fails fast, before anything is built, on values that cannot run."""
    from deep_image import models
    from deep_image.data import sources   # sources import config-free modules only

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    try:
        models.family(config.model.name).check(config)   # the family says what it can run
    except ValueError as e:
        raise ConfigError(str(e)) from None
    need(config.model.dtype in MODEL_DTYPES,
         f"config.model.dtype={config.model.dtype!r}; choose one of {', '.join(MODEL_DTYPES)}")
    need(config.model.width > 0, f"config.model.width must be > 0, got {config.model.width}")
    need(config.model.remat in models.base.REMAT,
         f"config.model.remat={config.model.remat!r}; choose one of "
         f"{', '.join(models.base.REMAT)}")
    need(config.model.head_init in ("he", "zeros"),
         f"config.model.head_init={config.model.head_init!r}; choose he or zeros")
    need(config.data.source in sources.SOURCES,
         f"config.data.source={config.data.source!r} is not a dataset; choose one of "
         f"{', '.join(sorted(sources.SOURCES))}")
    _check_splits(config.data, need)
    need(config.data.resize in ("square", "shorter_side"),
         f"config.data.resize={config.data.resize!r}; choose square or shorter_side")
    need(0 < config.data.crop <= config.data.scale,
         f"config.data.crop={config.data.crop} must be in (0, config.data.scale="
         f"{config.data.scale}]")
    need(len(config.data.mean) == 3 and len(config.data.std) == 3 and min(config.data.std) > 0,
         "config.data.mean and config.data.std need three values (RGB), std > 0")
    need(config.parallelism in PARALLELISMS,
         f"config.parallelism={config.parallelism!r}; choose data or model_data")
    need(config.finetune in FINETUNE_MODES,
         f"config.finetune={config.finetune!r}; choose one of {', '.join(FINETUNE_MODES)}")
    need(config.finetune == "all" or config.init_from,
         f"config.finetune={config.finetune!r} freezes layers, so it needs config.init_from "
         "(the pre-trained run to start from)")
    need(not config.init_from or os.path.isdir(config.init_from),
         f"config.init_from={config.init_from!r} is not a directory; name a trained workdir "
         "or the output of deep_image.tools.import_weights")
    need(config.eval.protocol in ("center_crop", "dense"),
         f"config.eval.protocol={config.eval.protocol!r}; choose center_crop or dense")
    need(0 <= config.ema_decay < 1, f"config.ema_decay={config.ema_decay} must be in [0, 1) "
         "(0: no moving average)")
    need(not config.eval.use_ema or config.ema_decay > 0,
         "config.eval.use_ema=True needs the moving average: set config.ema_decay (e.g. 0.999)")
    need(config.eval.headline in HEADLINES,
         f"config.eval.headline={config.eval.headline!r}; choose one of {', '.join(HEADLINES)}")
    need(all(s >= config.data.crop for s in config.eval.scales),
         f"config.eval.scales={tuple(config.eval.scales)}: every test scale must be at least "
         f"the crop ({config.data.crop})")
    d = config.data
    need(d.workers >= -1 and (d.threads == -1 or d.threads > 0) and d.prefetch > 0
         and d.device_prefetch >= 0,
         f"config.data.workers={d.workers}, threads={d.threads}, prefetch={d.prefetch}, "
         f"device_prefetch={d.device_prefetch}: workers >= 0 and threads > 0, or -1 for both "
         "to derive them from the CPUs; prefetch > 0; device_prefetch >= 0")
    need(d.capture_size == 0 or d.capture_size >= 8,
         f"config.data.capture_size={d.capture_size}: give 0 (images as stored) or a side of "
         "at least 8 pixels")
    need(d.placement in ("host", "device"),
         f"config.data.placement={d.placement!r}; choose host or device")
    need(d.placement == "host" or d.resize == "square",
         "config.data.placement='device' caches square images: set config.data.resize="
         "'square' (or placement='host')")
    need(0 < d.device_cache_share <= 1 and d.device_memory >= 0,
         f"config.data.device_cache_share={d.device_cache_share} must be in (0, 1] and "
         f"config.data.device_memory={d.device_memory} >= 0 (0: ask the device)")
    need(config.whole_below >= 0, f"config.whole_below must be >= 0 (0: every leaf in parts), "
         f"got {config.whole_below}")
    for key in ("batch_size", "eval_batch_size"):
        need(config[key] > 0, f"config.{key} must be > 0, got {config[key]}")
    need(config.accumulate_steps >= 1 and config.batch_size % config.accumulate_steps == 0,
         f"config.batch_size={config.batch_size} does not split into config.accumulate_steps="
         f"{config.accumulate_steps} micro-batches; make it a multiple of it (accumulate_steps "
         ">= 1)")
    need(config.total_steps >= 0 and config.num_epochs >= 0,
         f"config.total_steps={config.total_steps}, config.num_epochs={config.num_epochs}: "
         "neither may be negative (total_steps=0 derives the steps from num_epochs)")
    need(config.total_steps > 0 or config.num_epochs > 0,
         "set config.total_steps or config.num_epochs to a positive number")
    for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        need(config[key] > 0, f"config.{key} must be > 0, got {config[key]}")
    need(config.optimizer.learning_rate > 0, "config.optimizer.learning_rate must be > 0")
    need(0 < config.schedule.factor < 1, "config.schedule.factor must be in (0, 1)")
    need(config.schedule.rtol > 0, "config.schedule.rtol (the relative improvement that "
         "counts) must be > 0")
    need(all(int(s) == s and s > 0 for s in config.schedule.decay_steps),
         f"config.schedule.decay_steps={tuple(config.schedule.decay_steps)}: give positive "
         "step numbers")
    need(config.keep_checkpoints >= 1, "config.keep_checkpoints must be >= 1")


def _check_splits(data, need) -> None:
    """No decision sees the reported split: the schedule's split and the training split are
    disjoint from eval_split, and validation is disjoint from training."""
    from deep_image.data import splits
    names = {"train_split": data.train_split, "eval_split": data.eval_split}
    if data.val_split:
        names["val_split"] = data.val_split
    for key, name in names.items():
        splits.parse(name)     # a malformed slice is a DataError naming it
    need(not splits.overlaps(data.eval_split, data.train_split),
         f"config.data.eval_split={data.eval_split!r} overlaps train_split="
         f"{data.train_split!r}: the reported split must be unseen in training")
    if data.val_split:
        need(not splits.overlaps(data.val_split, data.eval_split),
             f"config.data.val_split={data.val_split!r} overlaps the reported eval_split="
             f"{data.eval_split!r}: the schedule would be tuned on the test set; hold out "
             "part of the training split instead, e.g. val_split='train[:10%]' with "
             "train_split='train[10%:]', or set val_split='' (no plateau decisions)")
        need(not splits.overlaps(data.val_split, data.train_split),
             f"config.data.val_split={data.val_split!r} overlaps train_split="
             f"{data.train_split!r}: validate on examples the model does not train on, e.g. "
             "val_split='train[:10%]' with train_split='train[10%:]'")
