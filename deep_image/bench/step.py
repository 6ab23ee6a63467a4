"""Training throughput and model FLOP utilization on whatever devices JAX sees.

    python -m deep_image.bench.step [--variant=vgg16] [--width=1] [--crop=224] [--batch=64]
        [--dtype=bfloat16] [--steps=20] [--peak_tflops=989] [--json=PATH]
        [--parallelism=data|model_data] [--model_axis=1]

Times the real train step (over all devices JAX sees: `--parallelism` and `--model_axis` pick
the §3 layout when there are several) with (a) one synthetic batch already on the devices, to
isolate the model, and (b) batches from the real Grain pipeline (SynthBirds rendered at the
crop size), to show whether input is the bottleneck. FLOPs come from the model: 2 x multiply-
adds forward, x3 for forward + backward (VGG-16 at 224: 15.47 G multiply-adds, ~92.8 GFLOP per
trained image). Where PyTorch is installed, the same network (torchvision's layout, SGD with
momentum, channels_last; on a GPU bfloat16 autocast and torch.compile) is timed on the same
device in the same run, with its ratio and MFU.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from deep_image import config as config_lib
from deep_image import xla_flags
from deep_image.models import vgg

flags.DEFINE_string("model", "vgg", "Model family (config.model.name).")
flags.DEFINE_string("variant", "vgg16", "Model variant (vgg11/16/19, resnet18/50).")
flags.DEFINE_float("width", 1.0, "Width multiplier.")
flags.DEFINE_integer("crop", 224, "Input size.")
flags.DEFINE_integer("batch", 64, "Global batch.")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_enum("parallelism", "data", ["data", "model_data"], "With several devices.")
flags.DEFINE_integer("model_axis", 1, "Devices on the mesh's model axis (hybrid when > 1).")
flags.DEFINE_float("peak_tflops", 0.0, "Peak dense TFLOP/s of one device for MFU (0: known "
                   "table for GPUs, none for CPUs).")
flags.DEFINE_bool("pipeline", True, "Also time with the real input pipeline.")
flags.DEFINE_bool("torch", True, "Also time PyTorch on the same device when installed.")
flags.DEFINE_bool("torch_compile", True, "On a GPU, torch.compile PyTorch's network.")
flags.DEFINE_string("json", None, "Write the results here.")
flags.DEFINE_string("profile", None, "Also write a jax.profiler trace of 5 steps here.")
FLAGS = flags.FLAGS

PEAK_TFLOPS = {("H100", "bfloat16"): 989.0, ("H100", "float32"): 67.0,
               ("H200", "bfloat16"): 989.0, ("A100", "bfloat16"): 312.0}


def _config():
    c = config_lib.base()
    c.model.name, c.model.variant = FLAGS.model, FLAGS.variant
    c.model.width, c.model.dtype = FLAGS.width, FLAGS.dtype
    c.data.scale = c.data.crop = FLAGS.crop
    c.data.synthetic.native_size = FLAGS.crop
    c.data.threads = 8
    c.batch_size = FLAGS.batch
    c.parallelism = FLAGS.parallelism
    c.mesh = (("data", -1), ("model", FLAGS.model_axis))
    return c


def _time(step_fn, state, batches, steps):
    for b in batches(3):
        state, m = step_fn(state, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for b in batches(steps):
        state, m = step_fn(state, b)
    jax.block_until_ready(m)
    return state, (time.perf_counter() - t0) / steps


def _torch_rate(num_classes: int, device: str) -> dict | None:
    """PyTorch's images/s for the same network, batch and crop on `device` ("cpu" or "cuda"):
    torchvision's layout, channels_last, SGD with momentum; on a GPU bfloat16 autocast (when
    --dtype=bfloat16) and torch.compile where it compiles."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    if FLAGS.model == "vgg":
        from deep_image.tools.torch_vgg import torchvision_layout_vgg
        net = torchvision_layout_vgg(FLAGS.variant, FLAGS.width, num_classes,
                                     vgg.fc_input_side(FLAGS.crop))
    else:
        from deep_image.tools.torch_resnet import torchvision_layout_resnet
        net = torchvision_layout_resnet(FLAGS.variant, FLAGS.width, num_classes)
    net = net.to(device=device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(FLAGS.batch, 3, FLAGS.crop, FLAGS.crop, device=device)
    x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (FLAGS.batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = device == "cuda" and FLAGS.dtype == "bfloat16"
    compiled = False
    if device == "cuda" and FLAGS.torch_compile:
        try:
            forward = torch.compile(net)
            compiled = True
        except Exception:   # no compiler on this host: eager
            forward = net
    else:
        forward = net

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(forward(x), y)
        loss.backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    try:
        for _ in range(3):
            step()
    except Exception:     # torch.compile failing at the first call: eager instead
        if not compiled:
            raise
        forward, compiled = net, False
        for _ in range(3):
            step()
    sync()
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
        step()
    sync()
    return {"images_per_second": FLAGS.batch * FLAGS.steps / (time.perf_counter() - t0),
            "device": device, "compiled": compiled, "autocast_bfloat16": autocast}


def main(argv):
    del argv
    from deep_image.data import pipeline, sources
    from deep_image.parallel import mesh as mesh_lib
    from deep_image.training import setup as setup_lib

    c = _config()
    source = sources.get_source(c.data, "train")
    num_classes = len(source.class_names)
    run = setup_lib.build(c, num_classes)
    mesh, state, step_fn = run.mesh, run.state, run.train_step
    batch_sharding = mesh_lib.batch_sharding(mesh)
    rng = np.random.default_rng(0)
    fixed = {"image": jax.device_put(rng.integers(0, 256, (c.batch_size, c.data.crop,
                                                            c.data.crop, 3), dtype=np.uint8),
                                     batch_sharding),
             "label": jax.device_put(rng.integers(0, num_classes, c.batch_size)
                                     .astype(np.int32), batch_sharding)}
    state, t_model = _time(step_fn, state, lambda n: [fixed] * n, FLAGS.steps)
    if FLAGS.profile:    # where the step's time goes (TensorBoard's profile plugin reads it)
        with jax.profiler.trace(FLAGS.profile):
            state, _ = _time(step_fn, state, lambda n: [fixed] * n, 5)

    # 2 FLOPs per multiply-add, x3 for forward + backward; other families: XLA's count
    if c.model.name == "vgg":
        flops_per_image = 6 * vgg.multiply_adds(c.model.variant, c.model.width, c.data.crop,
                                                num_classes)
    else:
        cost = step_fn.lower(state, fixed).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops_per_image = cost["flops"] / c.batch_size
    devices = jax.devices()
    kind = devices[0].device_kind
    peak = FLAGS.peak_tflops or next((v for (k, d), v in PEAK_TFLOPS.items()
                                      if k in kind and d == c.model.dtype), 0.0)
    result = {"device": kind, "devices": len(devices), "mesh": dict(mesh.shape),
              "parallelism": c.parallelism, "variant": c.model.variant,
              "width": c.model.width, "crop": c.data.crop, "batch": c.batch_size,
              "dtype": c.model.dtype, "gflop_per_image": flops_per_image / 1e9,
              "images_per_second_on_device": c.batch_size / t_model,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "deep_image_xla_defaults": xla_flags.ADDED}
    achieved = flops_per_image * result["images_per_second_on_device"]
    result["achieved_tflops"] = achieved / 1e12
    if peak:
        result["mfu"] = achieved / (peak * 1e12 * len(devices))
    if FLAGS.pipeline:
        it = iter(pipeline.train_dataset(source, c))

        def real(n):
            for _ in range(n):
                b = next(it)
                yield {k: jax.make_array_from_process_local_data(batch_sharding, v)
                       for k, v in b.items()}
        state, t_real = _time(step_fn, state, real, FLAGS.steps)
        result["images_per_second_with_pipeline"] = c.batch_size / t_real
    if FLAGS.torch:
        torch_result = _torch_rate(num_classes, "cpu" if devices[0].platform == "cpu"
                                   else "cuda")
        if torch_result:
            rate = torch_result["images_per_second"]
            result["torch"] = torch_result
            result["torch_images_per_second"] = rate
            result["jax_over_torch"] = result["images_per_second_on_device"] / rate
            if peak:
                result["torch_mfu"] = flops_per_image * rate / (peak * 1e12)

    print(f"{c.model.variant} x{c.model.width:g} at {c.data.crop}px, batch {c.batch_size}, "
          f"{c.model.dtype}, {len(devices)} x {kind}, {c.parallelism} over {dict(mesh.shape)}")
    print(f"  {xla_flags.describe()}")
    print(f"  {'model GFLOP per trained image':<40}{result['gflop_per_image']:.2f}")
    print(f"  {'images/s, batch on device':<40}{result['images_per_second_on_device']:.1f}")
    print(f"  {'achieved TFLOP/s':<40}{result['achieved_tflops']:.3f}")
    if "mfu" in result:
        print(f"  {'MFU':<40}{100 * result['mfu']:.1f}%")
    if "images_per_second_with_pipeline" in result:
        print(f"  {'images/s, real input pipeline':<40}"
              f"{result['images_per_second_with_pipeline']:.1f}")
    if "torch" in result:
        t = result["torch"]
        how = (f"PyTorch {t['device']}{', compiled' if t['compiled'] else ''}"
               f"{', bf16 autocast' if t['autocast_bfloat16'] else ''}")
        print(f"  {how + ' images/s':<40}{result['torch_images_per_second']:.1f}  "
              f"(JAX / PyTorch = {result['jax_over_torch']:.2f})")
        if "torch_mfu" in result:
            print(f"  {'PyTorch MFU':<40}{100 * result['torch_mfu']:.1f}%")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
