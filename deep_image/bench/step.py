"""Training throughput and model FLOP utilization on whatever devices JAX sees.

    python -m deep_image.bench.step [--variant=vgg16] [--width=1] [--crop=224] [--batch=64]
        [--dtype=bfloat16] [--steps=20] [--peak_tflops=989] [--json=PATH] [--profile=DIR]
        [--parallelism=data|model_data] [--model_axis=1] [--input=jpeg|synthetic]
        [--remat=none|blocks] [--accumulate=K]
    python -m deep_image.bench.step --plan [--device_memory_gib=80] [model flags]

Phases, each writing the JSON when it ends (atomically), so a phase killed by a time limit
loses only itself:
  torch     PyTorch, the same network (torchvision's layout, SGD with momentum, channels_last;
            on a GPU bfloat16 autocast, cudnn.benchmark and torch.compile where it compiles),
            in its own process, first: no JAX in it, nothing reserved by JAX's allocator
  model     the real train step (over all devices JAX sees: `--parallelism`, `--model_axis`)
            on one batch already on the devices: first-step (compile) seconds, median and
            p90 step, images/s, MFU, peak device memory
  profile   (--profile) a jax.profiler trace of 5 steps, summarised as ms per step per op
            class (bench/profile_summary.py)
  pipeline  the step fed by the real input pipeline: `--input=jpeg` (default) writes `--jpegs`
            q90 JPEGs of `--jpeg_scale` px to an image folder and trains on it as a run would
            (decode, resize, 224 crop, all six augmentations, Grain workers from the CPUs,
            batches put on the devices 2 ahead); `synthetic` renders SynthBirds at the crop
`--plan` runs nothing: for remat none and blocks it prints the largest micro-batch (rows per
device per pass) whose compiled step fits `--device_memory_gib` (default: what the first device
reports), with XLA's memory accounting and the residuals the forward pass keeps per image
(training/memory.py), and the `config.accumulate_steps` that `--batch` then needs.
The model phase also records the compiled step's memory (temporaries, peak) and the residual
bytes under `--remat`, beside the device's measured peak.
FLOPs come from the model: 2 x multiply-adds forward, x3 for forward + backward (VGG-16 at
224: 15.47 G multiply-adds, ~92.8 GFLOP per trained image).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from deep_image import config as config_lib
from deep_image.bench.hardware import peak_tflops

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
flags.DEFINE_bool("pipeline", True, "Also time the step fed by the real input pipeline.")
flags.DEFINE_enum("input", "jpeg", ["jpeg", "synthetic"], "The pipeline phase's input.")
flags.DEFINE_integer("jpegs", 256, "JPEG files the pipeline phase reads (--input=jpeg).")
flags.DEFINE_integer("jpeg_scale", 512, "Their side, and the resize scale (the paper's 512).")
flags.DEFINE_integer("pipeline_workers", -1, "Grain workers of the pipeline phase (-1: from "
                     "the CPUs).")
flags.DEFINE_bool("torch", True, "Also time PyTorch on the same device when installed.")
flags.DEFINE_bool("torch_only", False, "Time PyTorch alone (the torch phase's own process).")
flags.DEFINE_integer("torch_timeout", 300, "Seconds the PyTorch process may take.")
flags.DEFINE_bool("torch_compile", True, "On a GPU, torch.compile PyTorch's network.")
flags.DEFINE_integer("num_classes", 16, "Classes (SynthBirds: 16).")
flags.DEFINE_string("json", None, "Write the results here (after every phase).")
flags.DEFINE_string("profile", None, "Also write a jax.profiler trace of 5 steps here.")
flags.DEFINE_enum("remat", "none", ["none", "blocks"], "config.model.remat.")
flags.DEFINE_integer("accumulate", 1, "config.accumulate_steps (micro-batches per update).")
flags.DEFINE_bool("plan", False, "Print the largest micro-batch that fits, with and without "
                  "remat, and exit (compiles only).")
flags.DEFINE_float("device_memory_gib", 0.0, "Device memory the plan fits into (0: the first "
                   "device's bytes_limit; CPU: 16).")
FLAGS = flags.FLAGS

def save(result: dict, path: str | None) -> None:
    """Writes `result` to `path` atomically (a killed process leaves the last phase's)."""
    if not path:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def step_stats(seconds: list[float], batch: int) -> dict:
    s = np.asarray(seconds)
    return {"median_step_seconds": float(np.median(s)),
            "p90_step_seconds": float(np.percentile(s, 90)),
            "images_per_second": batch / float(np.median(s)),
            "images_per_second_mean": batch * len(s) / float(s.sum())}


def _config():
    c = config_lib.base()
    c.model.name, c.model.variant = FLAGS.model, FLAGS.variant
    c.model.width, c.model.dtype = FLAGS.width, FLAGS.dtype
    c.data.scale = c.data.crop = FLAGS.crop
    c.data.synthetic.native_size = FLAGS.crop
    c.batch_size = FLAGS.batch
    c.parallelism = FLAGS.parallelism
    c.mesh = (("data", -1), ("model", FLAGS.model_axis))
    c.model.remat, c.accumulate_steps = FLAGS.remat, FLAGS.accumulate
    return c


def plan(result: dict) -> None:
    """--plan: the largest micro-batch per device that fits, for remat none and blocks."""
    import math

    import jax

    from deep_image import models
    from deep_image.parallel import mesh as mesh_lib
    from deep_image.training import memory
    c = _config()
    mesh = mesh_lib.make_mesh(c.mesh)
    stats = jax.devices()[0].memory_stats() or {}
    budget = int(FLAGS.device_memory_gib * 2**30 or stats.get("bytes_limit", 16 * 2**30))
    devices = mesh.size
    print(f"{c.model.variant} x{c.model.width:g} at {c.data.crop}px, {c.model.dtype}, "
          f"{devices} x {jax.devices()[0].device_kind}: micro-batches that fit "
          f"{budget / 2**30:.1f} GiB per device ({jax.default_backend()}'s compiler)")
    print(f"{'remat':<8}{'rows/device':>12}{'compiled GiB':>14}{'residuals MiB/img':>19}"
          f"{'accumulate_steps for --batch=' + str(FLAGS.batch):>34}")
    result["plan"] = {"budget_bytes": budget, "backend": jax.default_backend(), "rows": {}}
    for remat in ("none", "blocks"):
        c.model.remat = remat
        rows, need = memory.largest_micro_batch(c, FLAGS.num_classes, budget, mesh)
        model = models.build(c.model, FLAGS.num_classes, c.data.crop)
        per_image = memory.residual_bytes_per_image(model)
        per_device = FLAGS.batch // devices
        k = math.ceil(per_device / rows) if rows else None
        while k and per_device % k:        # the batch must split into k equal micro-batches
            k += 1
        result["plan"]["rows"][remat] = {"rows_per_device": rows, **need,
                                         "residual_bytes_per_image": per_image,
                                         "accumulate_steps": k}
        print(f"{remat:<8}{rows:>12}{need['peak_bytes'] / 2**30:>14.2f}"
              f"{per_image / 2**20:>19.2f}{str(k) if k else 'does not fit':>34}")
    save(result, FLAGS.json)


def _timed_steps(step_fn, state, batches, steps: int):
    """(state, [seconds of each step]) over `steps` steps after 3 warm-up ones; each step is
    waited for, so the times are the device's."""
    import jax
    for b in batches(3):
        state, m = step_fn(state, b)
    jax.block_until_ready(m)
    times = []
    for b in batches(steps):
        t0 = time.perf_counter()
        state, m = step_fn(state, b)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return state, times


# ---------------------------------------------------------------------------------- PyTorch
def torch_rate() -> dict | None:
    """PyTorch's step on the same network, batch and crop, on CUDA when it has a GPU, else the
    CPU: torchvision's layout, channels_last, SGD with momentum; on a GPU bfloat16 autocast
    (when --dtype=bfloat16), cudnn.benchmark and torch.compile where it compiles. None
    without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    if FLAGS.model == "vgg":
        from deep_image.models.vgg import fc_input_side
        from deep_image.tools.torch_vgg import torchvision_layout_vgg
        net = torchvision_layout_vgg(FLAGS.variant, FLAGS.width, FLAGS.num_classes,
                                     fc_input_side(FLAGS.crop))
    else:
        from deep_image.tools.torch_resnet import torchvision_layout_resnet
        net = torchvision_layout_resnet(FLAGS.variant, FLAGS.width, FLAGS.num_classes)
    net = net.to(device=device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(FLAGS.batch, 3, FLAGS.crop, FLAGS.crop, device=device)
    x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, FLAGS.num_classes, (FLAGS.batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = device == "cuda" and FLAGS.dtype == "bfloat16"
    compiled = device == "cuda" and FLAGS.torch_compile
    forward = torch.compile(net) if compiled else net

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(forward(x), y)
        loss.backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        for _ in range(3):
            step()
    except Exception as e:     # torch.compile failing at the first call: eager instead
        if not compiled:
            raise
        print(f"torch.compile failed ({type(e).__name__}: {e}); timing eager", flush=True)
        forward, compiled = net, False
        for _ in range(3):
            step()
    sync()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    out = {"device": device, "compiled": compiled, "autocast_bfloat16": autocast,
           "cudnn_benchmark": True, "warmup_seconds": warmup, **step_stats(times, FLAGS.batch)}
    if device == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        out["device_name"] = torch.cuda.get_device_name()
    return out


def _torch_in_own_process() -> dict:
    """The torch phase: this benchmark with --torch_only in a child process (its own CUDA
    context; JAX not yet started here), bounded by --torch_timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "torch.json")
        args = [f"--{k}={getattr(FLAGS, k)}" for k in
                ("model", "variant", "width", "crop", "batch", "dtype", "steps",
                 "num_classes")] + [f"--torch_compile={FLAGS.torch_compile}"]
        try:
            proc = subprocess.run([sys.executable, "-m", "deep_image.bench.step",
                                   "--torch_only", f"--json={out}", *args],
                                  capture_output=True, text=True, timeout=FLAGS.torch_timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {FLAGS.torch_timeout} s"}
        if proc.returncode or not os.path.exists(out):
            return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
        with open(out) as f:
            return json.load(f)["torch"] or {"error": "PyTorch is not installed"}


# ---------------------------------------------------------------------------------- input
def jpeg_source(root: str):
    """An image folder of --jpegs q90 JPEGs of --jpeg_scale px (SynthBirds images, labels
    i % --num_classes) under `root`, read as a run reads one (data/archives.py)."""
    from deep_image.data import sources, synthetic
    synthetic.write_image_folder(root, synthetic.jpeg_files(FLAGS.jpegs, FLAGS.jpeg_scale),
                                 FLAGS.num_classes)
    c = config_lib.base()
    c.data.source, c.data.root = "folder", root
    return sources.get_source(c.data, "train")


def main(argv):
    del argv
    result = {"variant": FLAGS.variant, "width": FLAGS.width, "crop": FLAGS.crop,
              "batch": FLAGS.batch, "dtype": FLAGS.dtype}
    if FLAGS.plan:
        plan(result)
        return
    if FLAGS.torch_only:
        result["torch"] = torch_rate()
        print(json.dumps(result["torch"]))
        save(result, FLAGS.json)
        return
    if FLAGS.torch:                 # first: before this process's JAX takes the GPU's memory
        result["torch"] = _torch_in_own_process()
        save(result, FLAGS.json)

    import jax

    from deep_image import xla_flags
    from deep_image.data import pipeline
    from deep_image.models import vgg
    from deep_image.parallel import mesh as mesh_lib
    from deep_image.training import setup as setup_lib

    c = _config()
    num_classes = FLAGS.num_classes
    t0 = time.perf_counter()
    run = setup_lib.build(c, num_classes)
    mesh, state, step_fn = run.mesh, run.state, run.train_step
    batch_sharding = mesh_lib.batch_sharding(mesh)
    rng = np.random.default_rng(0)
    fixed = {"image": jax.device_put(rng.integers(0, 256, (c.batch_size, c.data.crop,
                                                            c.data.crop, 3), dtype=np.uint8),
                                     batch_sharding),
             "label": jax.device_put(rng.integers(0, num_classes, c.batch_size)
                                     .astype(np.int32), batch_sharding)}
    state, m = step_fn(state, fixed)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0            # setup, compilation and the first step

    # ------------------------------------------------------------------ model
    state, times = _timed_steps(step_fn, state, lambda n: [fixed] * n, FLAGS.steps)
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
    peak = FLAGS.peak_tflops or peak_tflops(kind, c.model.dtype)
    stats = step_stats(times, c.batch_size)
    result.update({
        "device": kind, "devices": len(devices), "mesh": dict(mesh.shape),
        "parallelism": c.parallelism, "gflop_per_image": flops_per_image / 1e9,
        "first_step_seconds": first, **{f"model_{k}": v for k, v in stats.items()},
        "images_per_second_on_device": stats["images_per_second"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "deep_image_xla_defaults": xla_flags.ADDED})
    achieved = flops_per_image * result["images_per_second_on_device"]
    result["achieved_tflops"] = achieved / 1e12
    if peak:
        result["peak_tflops"] = peak
        result["mfu"] = achieved / (peak * 1e12 * len(devices))
    memory = devices[0].memory_stats() or {}
    if "peak_bytes_in_use" in memory:
        result["peak_memory_bytes"] = memory["peak_bytes_in_use"]
    from deep_image.training import memory as memory_lib
    result.update({"remat": c.model.remat, "accumulate_steps": c.accumulate_steps,
                   "compiled_memory": memory_lib.compiled(step_fn, state, fixed),
                   "residual_bytes_per_image": memory_lib.residual_bytes_per_image(run.model)})
    torch_result = result.get("torch") or {}
    if torch_result.get("images_per_second"):
        rate = torch_result["images_per_second"]
        result["jax_over_torch"] = result["images_per_second_on_device"] / rate
        if peak:
            result["torch_mfu"] = flops_per_image * rate / (peak * 1e12)
    save(result, FLAGS.json)
    _print_model(result, c, kind)

    # ------------------------------------------------------------------ profile
    if FLAGS.profile:    # where the step's time goes (TensorBoard's profile plugin reads it)
        from deep_image.bench import profile_summary
        with jax.profiler.trace(FLAGS.profile, create_perfetto_trace=True):
            state, _ = _timed_steps(step_fn, state, lambda n: [fixed] * n, 5)
        hlo = step_fn.lower(state, fixed).compile().as_text()
        # 8 steps ran under the trace: 3 warm-up + 5
        result["profile_ms_per_step"] = profile_summary.summarize(FLAGS.profile, hlo, 8)
        save(result, FLAGS.json)
        print("  ms per step by op class: " + ", ".join(
            f"{k} {v:.2f}" for k, v in result["profile_ms_per_step"].items() if v))

    # ------------------------------------------------------------------ pipeline
    if FLAGS.pipeline:
        def put(batch):
            return {k: jax.make_array_from_process_local_data(batch_sharding, v)
                    for k, v in batch.items()}
        with tempfile.TemporaryDirectory() as root:
            if FLAGS.input == "jpeg":
                source = jpeg_source(root)
                c.data.scale = FLAGS.jpeg_scale
                c.data.augment.update(config_lib.all_six())
            else:
                from deep_image.data import sources
                source = sources.get_source(c.data, "train")
            c.data.workers = FLAGS.pipeline_workers
            workers, threads = pipeline.host_parallelism(c.data, jax.default_backend())
            it = iter(pipeline.on_devices(pipeline.train_dataset(
                source, c, backend=jax.default_backend()), put, c.data.device_prefetch))
            try:
                state, times = _timed_steps(step_fn, state,
                                            lambda n: [next(it) for _ in range(n)],
                                            FLAGS.steps)
            finally:
                it.close()
        stats = step_stats(times, c.batch_size)
        result.update({"pipeline_input": FLAGS.input, "pipeline_workers": workers,
                       "pipeline_threads": threads, "pipeline_scale": c.data.scale,
                       "images_per_second_with_pipeline": stats["images_per_second_mean"],
                       **{f"pipeline_{k}": v for k, v in stats.items()}})
        save(result, FLAGS.json)
        print(f"  {'images/s, real input pipeline':<40}"
              f"{result['images_per_second_with_pipeline']:.1f}  ({FLAGS.input}, {workers} "
              f"workers x {threads} threads)")


def _print_model(result, c, kind):
    from deep_image import xla_flags
    print(f"{c.model.variant} x{c.model.width:g} at {c.data.crop}px, batch {c.batch_size}, "
          f"{c.model.dtype}, {result['devices']} x {kind}, {c.parallelism} over "
          f"{result['mesh']}")
    print(f"  {xla_flags.describe()}")
    print(f"  {'model GFLOP per trained image':<40}{result['gflop_per_image']:.2f}")
    print(f"  {'setup + compile + first step, s':<40}{result['first_step_seconds']:.1f}")
    print(f"  {'step median / p90, ms':<40}{1e3 * result['model_median_step_seconds']:.1f} / "
          f"{1e3 * result['model_p90_step_seconds']:.1f}")
    print(f"  {'images/s, batch on device':<40}{result['images_per_second_on_device']:.1f}")
    print(f"  {'achieved TFLOP/s':<40}{result['achieved_tflops']:.3f}")
    if "mfu" in result:
        print(f"  {'MFU':<40}{100 * result['mfu']:.1f}%")
    if "peak_memory_bytes" in result:
        print(f"  {'peak device memory, GiB':<40}{result['peak_memory_bytes'] / 2**30:.2f}")
    print(f"  {'compiled step memory (XLA), GiB':<40}"
          f"{result['compiled_memory']['peak_bytes'] / 2**30:.3f}  (remat {result['remat']}, "
          f"accumulate {result['accumulate_steps']}; residuals "
          f"{result['residual_bytes_per_image'] / 2**20:.2f} MiB per image)")
    t = result.get("torch")
    if t and "images_per_second" in t:
        how = (f"PyTorch {t['device']}{', compiled' if t['compiled'] else ''}"
               f"{', bf16 autocast' if t['autocast_bfloat16'] else ''}")
        print(f"  {how + ' images/s':<40}{t['images_per_second']:.1f}  "
              f"(JAX / PyTorch = {result['jax_over_torch']:.2f})")
        if "torch_mfu" in result:
            print(f"  {'PyTorch MFU':<40}{100 * result['torch_mfu']:.1f}%")
    elif t:
        print(f"  PyTorch: {t.get('error', t)}")


if __name__ == "__main__":
    app.run(main)
