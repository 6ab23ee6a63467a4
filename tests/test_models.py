import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deep_image import constants
from conftest import USERS_XLA_OPTIONS, assert_trees_equal, build_model, init_params
from deep_image.models.vgg import VGG


@pytest.mark.parametrize("variant,count", [("vgg16", 138_357_544), ("vgg19", 143_667_240)])
def test_exact_parameter_counts_at_1000_classes(variant, count):
    model = build_model(variant, 1000, width=1.0, input_size=224, dtype="float32", dropout_rate=0.5)
    assert model.num_params() == count


@pytest.mark.parametrize("variant,convs", [("vgg16", 13), ("vgg19", 16)])
def test_layer_structure(variant, convs):
    params = build_model(variant, 10, width=0.25, input_size=64, dtype="float32",
                   dropout_rate=0.5).abstract_params
    assert sum(k.startswith("conv") for k in params) == convs
    assert [k for k in params if k.startswith("fc")] == ["fc1", "fc2", "fc3"]
    assert params["conv1_1"]["kernel"].shape == (3, 3, 3, 16)        # HWIO, width 1/4 of 64
    assert params["fc1"]["kernel"].shape == (2 * 2 * 128, 1024)      # 64 / 2^5 = 2
    assert params["fc3"]["kernel"].shape == (1024, 10)


def test_output_shape_dtype_and_width():
    model = build_model("vgg16", 7, width=0.125, input_size=32, dtype="float32", dropout_rate=0.5)
    params = init_params(model, 0)
    logits = model.apply(params, jnp.zeros((3, 32, 32, 3)))
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    assert params["conv5_3"]["kernel"].shape[-1] == 64               # 512 / 8
    wide = build_model("vgg16", 7, width=1.5, input_size=32, dtype="float32", dropout_rate=0.5)
    assert wide.abstract_params["fc1"]["kernel"].shape[1] == 6144    # "larger" model, §5.1


def test_bfloat16_compute_keeps_float32_parameters():
    model = build_model("vgg16", 5, width=0.125, input_size=32, dtype="bfloat16", dropout_rate=0.5)
    params = init_params(model, 0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    lo = model.apply(params, x)
    f32 = build_model("vgg16", 5, width=0.125, input_size=32, dtype="float32", dropout_rate=0.5)
    hi = f32.apply(params, x)
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, hi, rtol=0.1, atol=0.1 * float(jnp.abs(hi).max()))
    assert not np.array_equal(lo, hi)                                # really computed in bf16


def test_dropout_only_in_training_and_deterministic_given_key():
    model = build_model("vgg16", 5, width=0.125, input_size=32, dtype="float32",
                  dropout_rate=constants.DROPOUT_RATE)
    params = init_params(model, 0)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    np.testing.assert_array_equal(model.apply(params, x), model.apply(params, x))
    key = jax.random.PRNGKey(2)
    a = model.apply(params, x, train=True, dropout_key=key)
    b = model.apply(params, x, train=True, dropout_key=key)
    c = model.apply(params, x, train=True, dropout_key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_dropout_zeroes_a_share_of_rate_and_scales_the_rest_by_one_over_keep():
    """Inverted dropout, by hand: every activation is 0 or x / (1 - rate), about `rate` of them
    0, so a unit's expected training activation is its test-time one (what lets the test
    forward pass run without dropout)."""
    from deep_image.models.vgg import dropout_slice
    rate = constants.DROPOUT_RATE
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (64, 128)), jnp.float32)
    y = np.asarray(dropout_slice(x, jax.random.PRNGKey(0), rate, x.shape, (0, 0)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    assert abs(kept.mean() - (1 - rate)) < 0.03, kept.mean()    # 8,192 draws: sd 0.0055


def test_he_initialization_scale():
    # full width (conv3_1 as the paper's), at a 32-pixel input: FC1 takes 512 features, not
    # 25,088 (the whole net's 138M weights, initialized op by op and asynchronously, cost this
    # test and the next one 20.8 s, against 9.1 s so: 2026-12-04, the two alone, -n 0)
    params = init_params(build_model("vgg16", 10, width=1.0, input_size=32))
    k = np.asarray(params["conv3_1"]["kernel"])          # fan-in 3*3*128
    assert abs(k.std() - np.sqrt(2 / (9 * 128))) < 0.05 * np.sqrt(2 / (9 * 128))
    assert np.all(np.asarray(params["conv3_1"]["bias"]) == 0)


def test_bad_variant_dtype_and_input_size():
    with pytest.raises(ValueError, match="unknown model variant 'vgg99'"):
        VGG("vgg99", 10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="compute dtype"):
        VGG("vgg16", 10, dtype="int8", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="too small"):
        VGG("vgg16", 10, input_size=16, rngs=nnx.Rngs(0))
    model = build_model("vgg16", 5, width=0.125, input_size=32, dtype="float32", dropout_rate=0.5)
    with pytest.raises(ValueError, match="built for 32x32"):
        model.apply(init_params(model, 0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.parametrize("variant,count", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnet_parameter_counts_match_torchvision(variant, count):
    model = build_model(variant, 1000, width=1.0, input_size=224)
    assert model.num_params() == count
    assert model.classifier == "fc" and model.head_layers == ("fc",)
    assert set(model.abstract_stats["bn1"]) == {"mean", "var"}


def test_resnet_batchnorm_statistics_and_dense_scores():
    model = build_model("resnet50", 5, width=1 / 16, input_size=32)
    params, stats = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 32, 32, 3)) * 2 + 1
    # training mode: normalized by the batch, running statistics move 10% towards it
    _, new = model.apply_with_stats(params, x, stats=stats, train=True, update_stats=True)
    conv1 = model.module(params, stats).conv1(x)
    mean = np.asarray(conv1, np.float64).mean((0, 1, 2))
    np.testing.assert_allclose(new["bn1"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
    # frozen (fine-tuning the head only): statistics untouched
    _, same = model.apply_with_stats(params, x, stats=stats, train=True, update_stats=False)
    assert_trees_equal(same, stats)
    # dense testing of a globally pooled net at the training size is the net itself
    np.testing.assert_allclose(model.dense_scores(params, x, stats=new),
                               model.apply(params, x, stats=new), rtol=1e-5, atol=1e-5)
    assert model.dense_scores(params, jnp.zeros((2, 48, 64, 3)), stats=new).shape == (2, 5)


@pytest.mark.parametrize("variant,width", [("vgg11", 1 / 16), ("resnet18", 1 / 8)])
def test_the_initializer_compiled_faster_gives_the_weights_of_xlas_default(variant, width):
    """state.create compiles the initializer at the options `init_compiler_options` gives
    (XLA:CPU optimization level 1: a quarter of the compile time): its weights and statistics
    must be, bit for bit, those of XLA's default level (level 0 would not be: its erf_inv
    rounds differently)."""
    from deep_image.parallel import mesh as mesh_lib
    from deep_image.training import state as state_lib
    model = build_model(variant, 16, width=width, input_size=32)
    options = state_lib.init_compiler_options(mesh_lib.make_mesh((("data", 1), ("model", 1))))
    assert options == {"xla_backend_optimization_level": 1}       # on this CPU
    key = jax.random.PRNGKey(3)
    # XLA's own defaults for the reference, whatever the suite sets (conftest.py turns most
    # optimizations off, and XLA's newer fusion emitters: USERS_XLA_OPTIONS turns them back on;
    # the initializer's options override the first, as in a user's run); fresh
    # functions, so nothing compiled before comes back from JAX's in-memory caches
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        default = jax.jit(lambda k: model.init(k), compiler_options=USERS_XLA_OPTIONS)(key)
        fast = jax.jit(lambda k: model.init(k),
                       compiler_options={**options, **USERS_XLA_OPTIONS})(key)
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
    assert_trees_equal(fast, default)
