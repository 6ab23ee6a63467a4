"""Every benchmark config of experiments/ trains two steps and evaluates with its own test
protocol on mock data of the right structure at a tiny width, so a wiring mistake in any config
fails CI. Fine-tuning configs start from a tiny checkpoint of their variant."""

import glob
import importlib.util
import json
import os

import numpy as np

import pytest

from conftest import REPO, build_model
from deep_image import config as config_lib
from deep_image.data import sources
from deep_image.evaluation.evaluator import Evaluator, Protocol
from deep_image.training import loop
from deep_image.training.checkpoint import Trained, write_weights
from test_sources import _fgvc, _indoor

WIDTH = 1 / 32
# The paper configs compute in bfloat16 (for GPUs), which XLA:CPU emulates slowly. One config
# keeps it, so the bfloat16 path of every family's step and evaluation stays wired; the others
# check their own wiring in float32.
BFLOAT16_KEPT = {"cub_512", "cub_resnet50_448"}
EXPERIMENTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{REPO}/experiments/*.py")
                     if not p.endswith("synthetic.py"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, f"{REPO}/experiments/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny(c, *, keep_dtype=False, **extra):
    c.model.width = WIDTH
    if not keep_dtype:
        c.model.dtype = "float32"
    c.data.scale, c.data.crop = 40, 32
    c.data.workers, c.data.threads = 0, 2
    c.eval.scales = (40, 48)
    c.batch_size = c.eval_batch_size = 4
    c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = c.log_every_steps = 2
    c.progress_bar = False
    if c.data.source == "synthetic":    # the claims config: a few small SynthBirds images
        s = c.data.synthetic
        s.native_size, s.train_size, s.val_size, s.test_size = 48, 48, 32, 32
    for k, v in extra.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A checkpoint of each variant the fine-tuning configs start from, at the tests' width and
    crop, freshly initialized and written as `tools/import_weights` writes imported weights
    (checkpoint.write_weights: what fine-tuning reads of it is shapes, values and class
    names; fine-tuning from a trained run is test_finetune.py's and test_resnet.py's).
    Writing them, not training them, took this fixture from 40 s to a few (2026-12-03)."""
    import jax
    runs = {}
    for i, variant in enumerate(("vgg16", "vgg19", "resnet50")):
        wd = str(tmp_path_factory.mktemp(f"pre_{variant}"))
        model = build_model(variant, 10, width=WIDTH, input_size=32)
        params, stats = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(i)))
        write_weights(wd, params, stats, [f"class {k}" for k in range(10)])
        runs[variant] = wd
    return runs


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")
    return {"aircraft": str(_fgvc(root)[0]), "indoor67": str(_indoor(root / "indoor")[0])}


def test_every_paper_experiment_has_a_config():
    assert {"cub_256", "cub_512", "flowers_all", "flowers_last", "pets_fc", "aircraft_all",
            "indoor_fc", "ilsvrc_vgg16_256", "ilsvrc_vgg19_512",
            "ilsvrc_vgg19_wide_512"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_trains_and_evaluates(name, pretrained, archives, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    module = _load(name)
    assert module.__doc__ and "Target:" in module.__doc__
    c = module.get_config()
    with pytest.raises(AttributeError):
        c.model.widht = 2                       # locked: a typo is an error
    if name != "claims":
        assert c.model.dtype == "bfloat16"      # as the paper configs are written
    _tiny(c, keep_dtype=name in BFLOAT16_KEPT)
    if c.init_from:
        c.init_from = pretrained[c.model.variant]
    mock_examples = 40   # enough for the 10% holdouts: a class of 2+ examples is split
    if c.data.val_split == "train[:10]":
        # minival needs 11+ images per class; 100 mock images of 1000 classes have 1 or 2
        c.data.train_split, c.data.val_split = "train[50%:]", "train[:50%]"
        mock_examples = 100
    if c.data.source in archives:
        c.data.root = archives[c.data.source]
    config_lib.check(c)
    with tfds.testing.mock_data(num_examples=mock_examples):
        result = loop.train_and_evaluate(c, str(tmp_path))
        assert result["step"] == 2 and result["split"] == c.data.eval_split
        assert ("val/headline" in result) == bool(c.data.val_split)
        run = Trained(str(tmp_path), c)
        source = sources.get_source(c.data, c.data.eval_split)
        values = Evaluator(run.model, c, source, Protocol.of(c), cache=False).run(
            run.params, "eval", c.eval.headline, run.stats)
    assert values["eval/headline"] == values[f"eval/{c.eval.headline}"]
    assert values["eval/examples"] == len(source) > 0


def test_a_paper_config_trains_with_the_device_cache_accumulation_and_remat(pretrained,
                                                                          tmp_path):
    """cub_512 (bfloat16, as written) on mock CUB data with `placement=device` (the training
    split in the cache on the device, all of its augmentations drawn in the step),
    `accumulate_steps=4` (each batch of 4 as 4 micro-batches) and `remat=blocks`."""
    tfds = pytest.importorskip("tensorflow_datasets")
    c = _tiny(_load("cub_512").get_config(), keep_dtype=True)
    assert all(c.data.augment[name] for name in config_lib.AUGMENTATIONS)   # the paper's six
    c.init_from = pretrained[c.model.variant]
    c.data.placement = "device"
    c.accumulate_steps, c.model.remat = 4, "blocks"
    config_lib.check(c)
    with tfds.testing.mock_data(num_examples=40):
        result = loop.train_and_evaluate(c, str(tmp_path))
    assert result["step"] == 2 and np.isfinite(result["eval/loss"])
    meta = json.load(open(tmp_path / "checkpoints" / "2" / "meta" / "metadata"))
    assert meta["placement"] == "device" and meta["config"]["model"]["dtype"] == "bfloat16"
    assert meta["config"]["accumulate_steps"] == 4 and meta["config"]["model"]["remat"] == "blocks"
