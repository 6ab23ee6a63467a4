"""§3 parallelism on 8 simulated CPU devices (in a subprocess, so the rest of the suite keeps
one device): data (butterfly synchronization + lazy update), model_data on all devices, and
the hybrid (FC split over `model`, data parallel over `data`) each equal single-device
training, also when the steps draw their batches from the device cache; layouts and rule errors
in-process."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import pytest

from conftest import REPO, assert_trees_equal, tiny_config, xla_flags
from deep_image import models
from deep_image.parallel import layout as layout_lib

MODES = {"data": ("data", 8, 1, "--bf16", "--accumulate=2"),
         "model_data": ("model_data", 8, 1, "--accumulate=2"),
         "hybrid": ("model_data", 2, 4, "--accumulate=2"),
         "hybrid_columns": ("model_data", 2, 4, "columns"),   # FC1 whole, FC2/FC3 by columns
         # the second family: ResNet-18 (1/8 width), cross-device BatchNorm, its fc by columns
         # (model_data on all 8 is the hybrid's code with another FC axis size: VGG covers it)
         "resnet_data": ("data", 8, 1, "--family=resnet"),
         "resnet_hybrid": ("model_data", 2, 4, "--family=resnet", "--bf16"),
         # placement 'device' (data/device_cache.py): each step draws and augments its own
         # rows from the device cache, split over the 8 devices or whole on each; the checks
         # below are the layout's (before the "+"), on the global batches one device draws
         "data+device_sharded": ("data", 8, 1, "--placement=sharded"),
         "hybrid+device_replicated": ("model_data", 2, 4, "--placement=replicated")}


# The one mode compiled with XLA's own fusion emitters, not the suite's faster-compiling ones
# (conftest.py): with those, its one-device and 8-device steps differed by 4e-5 in the loss
# (2026-12-02), above this module's 1e-5 (each program draws and rounds the augmented pixels in
# its own fused code). The other modes passed at 1e-5 with the suite's (fresh-clone runs of
# 1a73112 and of the tenth session) and keep them: this module alone, one run after the other,
# nothing else running (2026-12-03, `python -m pytest -q -n 0 tests/test_parallel.py`), 181.2 s
# wall and 232.5 s of CPU with every mode at XLA's emitters, 152.6 s and 171.1 s so.
XLAS_OWN_EMITTERS = {"data+device_sharded"}


def _run(parallelism, data, model, *rules, suite=True):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(8, suite=suite)}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "butterfly_equivalence.py"),
                           parallelism, str(data), str(model), *rules], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=list(MODES))
def result(request):
    return {"mode": request.param.split("+")[0],
            **_run(*MODES[request.param], suite=request.param not in XLAS_OWN_EMITTERS)}


def test_same_loss_and_parameters_as_one_device(result):
    assert result["devices"] == 8
    assert result["init_diff"] == 0.0     # created sharded from the same seed: same weights
    # float32 sums in another order (8 partial sums, then the reduce-scatter): agreement to
    # ~1e-7 absolute on weights of ~0.1-1; a wrong gradient part, scaling (e.g. a gradient
    # counted on each of the 4 devices of a model group) or dropout mask would be off by >1e-2.
    # Each step from one device's own state before it (forced), and the runs left to go their
    # own ways (free): three steps for VGG, the first for ResNet. ResNet-18 on 16 tiny images
    # sits ~1e-6 from a ReLU's kink: on one device, scaling its initial weights by 1 + 1e-6
    # noise moves them 5e-4 after two steps (docs/xla_cpu/chaos.py), as large as float sums in
    # another order do here; each step is still exact to ~2e-7.
    ref = result["ref_losses"]
    assert len(ref) == len(result["losses"]) == len(result["forced_losses"]) == 3
    steps = 1 if result["mode"].startswith("resnet") else len(ref)
    for kind, losses, refs, diffs in (
            ("forced", result["forced_losses"], ref, result["forced_param_diff"]),
            ("free", result["losses"][:steps], ref[:steps], result["max_param_diff"][:steps])):
        for ours, one in zip(losses, refs, strict=True):
            assert ours == pytest.approx(one, rel=1e-5, abs=1e-6), kind
        assert len(diffs) == len(refs) and max(diffs) < 1e-5, (kind, diffs)
    if result["mode"].startswith("resnet"):
        # BatchNorm statistics of the global batch, as one device computes them
        assert result["num_stats"] > 0 and max(result["forced_stat_diff"]) < 1e-5
        assert result["max_stat_diff"][0] < 1e-5


def test_accumulation_is_the_whole_batch_update_with_one_reduce_scatter_each(result):
    """config.accumulate_steps=2 on the mesh (each device's 2 rows as 2 micro-batches of 1,
    dropout on): each step from one device's state equals one device's whole-batch step, and
    the program synchronizes once per update: the butterfly's reduce-scatters (and
    all-reduces of whole leaves) and the lazy update's all-gathers are those of the step
    without accumulation, op for op (one per micro-batch would double them; only the FC
    activations' collectives over the FC axis come once per micro-batch)."""
    acc = result["accumulated"]
    if acc is None:
        pytest.skip("this mode runs no accumulation (MODES: data, model_data and hybrid do)")
    assert acc["k"] == 2
    for ours, one in zip(acc["losses"], result["ref_losses"], strict=True):
        assert ours == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert max(acc["param_diff"]) < 1e-5, acc["param_diff"]
    once = acc["sync_collectives_once"]
    assert any(c.startswith("reduce-scatter") for c in once), once
    assert any(c.startswith("all-gather") for c in once), once
    assert acc["sync_collectives"] == once


def test_state_is_created_sharded(result):
    # jit(init, out_shardings=...): one device outputs ~1/8 of the parameters and ~1/8 of the
    # momentum, and its temporaries never hold the whole parameter set
    whole = result["param_bytes"]
    assert result["init_output_bytes"] < 2 * whole / 6, result
    assert result["init_temp_bytes"] < whole, result


def test_gradients_sync_by_reduce_scatter_and_all_gather(result):
    assert result["reduce_scatter"] >= 1 and result["all_gather"] >= 1
    shapes = result["all_reduce_shapes"]
    scalars = ("f32[]", "s32[]")          # the loss and the hit count
    # the small leaves kept whole (config.whole_below): their gradients, and only theirs
    # among the parameters, are all-reduced (f32[channels]), every one of them
    whole = {f"f32[{','.join(map(str, shape))}]" for shape in result["whole_leaves"].values()}
    assert whole, result["whole_leaves"]
    if result["mode"].startswith("resnet"):
        # besides the global batch's BatchNorm sums (forward), only the cotangents of those
        # statistics (backward: [1, 1, 1, channels]), the whole leaves' gradients, the loss and
        # the hits are all-reduced; the fc split by columns all-gathers its outputs. (In the
        # optimized HLO not every whole BatchNorm leaf's gradient keeps an all-reduce of its
        # own shape; test_same_loss_and_parameters_as_one_device checks their values.)
        assert result["batch_stat_reduces"] >= 1 and whole & set(shapes), (whole, shapes)
        assert all(s in scalars or s in whole or re.fullmatch(r"f32\[1,1,1,\d+\]", s)
                   for s in shapes), shapes
        return
    assert whole <= set(shapes), (whole, shapes)
    if result["mode"] == "data":
        # no all-reduce of any other gradient: only the whole leaves', the loss and accuracy
        assert all(s in scalars or s in whole for s in shapes), shapes
    else:
        # only FC activations (the FC group's rows x FC width 256 or 16 classes) are summed
        # over the FC axis; other FC gradients never are, conv kernels' are reduce-scattered
        rows = 16 if result["mode"] == "model_data" else 8
        assert all(s in (f"f32[{rows},256]", f"f32[{rows},16]", *scalars) or s in whole
                   for s in shapes), shapes


def test_bfloat16_runs_gather_weights_in_bfloat16_and_compute_the_same(result):
    """The lazy update gathers a weight in the dtype the forward pass computes it in: half
    the bytes in bfloat16 runs, and the same step, bitwise, as gathering float32 (the forward
    pass rounds it to bfloat16 anyway). ResNet's BatchNorm scale and bias are used in float32:
    gathered in float32 (in bfloat16 the step would differ)."""
    if result["bf16"] is None:
        pytest.skip("this mode runs no bfloat16 step (MODES: data and resnet_hybrid do)")
    bf16 = result["bf16"]
    assert bf16["bitwise"]
    got = sorted(shapes[0] for shapes in bf16["lazy_gathers"])
    dtypes = bf16["forward_dtypes"]
    assert {"bfloat16"} <= set(dtypes.values()) <= {"bfloat16", "float32"}, dtypes
    if result["mode"].startswith("resnet"):
        assert dtypes["bn1/scale"] == dtypes["bn1/bias"] == "float32"
        assert dtypes["conv1/kernel"] == dtypes["fc/kernel"] == dtypes["fc/bias"] == "bfloat16"
        assert any(g.startswith("f32[") for g in got) and any(g.startswith("bf16[") for g in got)
    else:
        assert set(dtypes.values()) == {"bfloat16"}
        assert got and all(g.startswith("bf16[") for g in got), got


def test_lazy_update_gathers_each_layer_on_its_own(result):
    """§3.1's lazy update: one all-gather per stored block, none merged with another layer's
    (deep_image/xla_flags.py keeps XLA's GPU all-gather combiner off for the same reason),
    so a layer's forward waits for its own weights only."""
    gathers, flat = result["lazy_gathers"], result["flat_leaves"]
    assert all(len(shapes) == 1 for shapes in gathers), gathers          # no tuple gathers
    got = sorted(shapes[0] for shapes in gathers)
    want = sorted(f"f32[{a},{b}]" for a, b in flat.values())
    assert got == want, (got, want)


def test_each_device_holds_its_share(result):
    shards, local = result["shards"], result["local_shapes"]
    if result["mode"].startswith("resnet"):
        fc = local["fc/kernel"]
        assert shards["conv1/kernel"][2] == 8 and local["conv1/kernel"] == [7, 7, 3, 8]
        if result["mode"] == "resnet_data":
            assert fc == [64, 16]
        else:                              # fc split by output columns over the FC axis
            assert fc == [64, 16 // 4]
        return
    # every device holds a different 1/8 of each conv layer (owned parts of the flattened,
    # padded kernel), gathered whole where the forward pass uses it (the lazy update)
    assert shards["conv1_1/kernel"] == [[1, 112], [1, 14], 8]       # 3*3*3*4 = 108 -> 8 x 14
    assert local["conv1_1/kernel"] == [3, 3, 3, 4]
    assert result["momentum_shards"]["conv1_1/kernel"] == [1, 14]   # optimizer state too
    if result["mode"] == "data":
        assert shards["fc1/kernel"] == [[1, 8192], [1, 1024], 8]   # 32*256 / 8, a part
    elif result["mode"] == "model_data":
        # FC1 by columns, FC2/FC3 by rows: each device's shard is 1/8 of the kernel
        assert shards["fc1/kernel"] == [[32, 256], [32, 32], 8]
        assert shards["fc2/kernel"] == [[256, 256], [32, 256], 8]
        assert shards["fc3/kernel"] == [[256, 16], [32, 16], 8]
        assert shards["fc2/bias"] == [[256], [256], 1]            # computed after the sum
    elif result["mode"] == "hybrid_columns":
        assert local["fc1/kernel"] == [32, 256]                   # whole, owned over data
        assert shards["fc1/kernel"] == [[1, 8192], [1, 4096], 2]
        assert local["fc2/kernel"] == [256, 64] and local["fc3/kernel"] == [256, 4]
        assert shards["fc3/bias"] == [[16], [4], 4]               # small: whole, over data
    else:
        # hybrid 2 x 4: a slice per model device (1/4), owned in halves over data: 1/8
        assert local["fc1/kernel"] == [32, 64] and local["fc2/kernel"] == [64, 256]
        assert shards["fc1/kernel"] == [[4, 2048], [1, 1024], 8]
        assert shards["fc2/kernel"] == [[4, 16384], [1, 8192], 8]
        assert shards["fc2/bias"] == [[1, 256], [1, 128], 2]     # replicated over model


def _plan(mesh, parallelism="model_data", rules=None, **overrides):
    config = tiny_config(**overrides)
    model = models.build(config.model, 16, config.data.crop)
    return layout_lib.plan(model.abstract_params, mesh, parallelism,
                           config.sharding_rules if rules is None else rules,
                           head_layers=model.head_layers, whole_below=config.whole_below)


def test_layout_round_trip_and_fc_axis():
    config = tiny_config()
    model = models.build(config.model, 16, config.data.crop)
    params = jax.device_get(model.init(jax.random.PRNGKey(0))[0])
    for mesh, fc in (({"data": 8, "model": 1}, "data"), ({"data": 2, "model": 4}, "model"),
                     ({"data": 1, "model": 8}, "model"), ({"data": 1, "model": 1}, None)):
        layout = _plan(mesh)
        assert layout.fc_axis == fc
        stored = layout.to_stored(params)
        back = layout_lib.Layout.from_description(layout.describe()).from_stored(stored)
        assert_trees_equal(back, params)
    assert not any(lf.flat or lf.split_dim is not None
                   for lf in _plan({"data": 1, "model": 1}).leaf_list())
    assert _plan({"data": 8, "model": 1}, "data").fc_axis is None


def test_leaves_of_fewer_than_whole_below_elements_are_kept_whole():
    """Data parallel on 8 devices: every leaf is owned by all 8; one of fewer than
    `whole_below` elements stays whole, one of exactly that many or more is kept in parts."""
    config = tiny_config()
    model = models.build(config.model, 16, config.data.crop)
    sizes = {(k, n): math.prod(v.shape) for k, d in model.abstract_params.items()
             for n, v in d.items()}
    for threshold in sorted({*sizes.values(), 1}):
        layout = _plan({"data": 8, "model": 1}, "data", whole_below=threshold)
        for (k, n), size in sizes.items():
            lf = layout.leaves[k][n]
            assert lf.owners == 8 and lf.whole == (size < threshold), (k, n, size, threshold)
            assert lf.flat == (size >= threshold)


@pytest.mark.parametrize("mesh,parallelism,rules,words", [
    ({"data": 2, "model": 2}, "data", None, "set config.parallelism=model_data"),
    ({"data": 4, "model": 1}, "model_data", ((r"conv1_1/kernel", (None, None, None, "model")),),
     "conv layers are data parallel"),
    ({"data": 4, "model": 1}, "model_data", ((r"fc1/kernel", ("model", "model")),),
     "one dimension"),
    ({"data": 4, "model": 1}, "model_data", ((r"fc1/kernel", (None, "model")),),
     "bias is split exactly when"),
    ({"data": 1, "model": 3}, "model_data", None, "choose a model.width"),
    ({"data": 4, "model": 1}, "model_data", ((r"fc1/kernel", (None, "gpus")),), "each None or"),
    ({"data": 4, "model": 1}, "model_data", (("(", ()),), "each rule is (regex, spec axes)"),
])
def test_bad_rules_and_meshes_say_what_to_do(mesh, parallelism, rules, words):
    with pytest.raises(layout_lib.LayoutError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _plan(mesh, parallelism, rules)


def test_gradient_all_reduce_check_sees_tuple_and_async_all_reduces():
    """The HLO reading behind test_gradients_sync_by_reduce_scatter_and_all_gather: XLA may
    combine all-reduces into one tuple-shaped op, or issue them async (-start/-done)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from butterfly_equivalence import collective_summary
    hlo = """
  %ar = (f32[3,3,3,4]{3,2,1,0}, f32[]) all-reduce(%g, %l), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %ars = f32[256,16]{1,0} all-reduce-start(%g2), channel_id=2, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %ard = f32[256,16]{1,0} all-reduce-done(%ars)
  %rs = f32[14]{0} reduce-scatter(%g3), channel_id=3, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, to_apply=%add
  %ags = (f32[14]{0}, f32[112]{0}) all-gather-start(%p), channel_id=4, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
"""
    got = collective_summary(hlo)
    assert got["all_reduce_shapes"] == ["f32[3,3,3,4]", "f32[]", "f32[256,16]"]
    assert got["reduce_scatter"] == 1 and got["all_gather"] == 1
