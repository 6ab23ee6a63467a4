"""Scaling report (§3.3, Figure 2): what each parallelism sends, and what that predicts.

    python -m deep_image.bench.scaling [--json PATH] [--plot PATH] [--devices 1,2,4,...,64]
        [--compute_seconds S --link_gbps G --dtype D]   # add a measured device

Compiles the full train step (VGG-16 at 224, 1000 classes, 64 images per device: the paper's
"slices = 64") from abstract shapes, on N simulated CPU devices, for each parallelism:
`data` (§3.1), `model_data` (§3.2, FC layers split over all N) and `hybrid` (FC split over
the 4 GPUs of a node, as in Minwa's 4-GPU servers, data parallel across nodes). Nothing runs.
From each compiled program it reads every collective (kind, payload, group size, and whether
it is the butterfly's reduce-scatter / lazy all-gather or an activation exchange) and the
per-device bytes of weights and optimizer state.

Bytes per device are what a bandwidth-optimal ring sends: (g-1)/g x the full payload for an
all-gather or reduce-scatter over g devices, 2(g-1)/g for an all-reduce. The ring optimum of
gradient synchronization is 2(g-1)/g x the gradient bytes each group of g devices must sum.

Time model, per device and step: compute t_c = FLOPs / (peak x utilization) (or the measured
`--compute_seconds`); each collective costs bytes / link bandwidth + (g-1) x latency. The
butterfly's exchange overlaps compute (the lazy update: FC gradients, the bulk, are reduced
during the conv backward and gathered during the next conv forward), so only what exceeds
`--overlap` x t_c shows; activation exchanges of model-data parallelism sit on the critical
path. Speedup(N) = N x t_step(1) / t_step(N) at a fixed 64 images per device.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
from absl import app, flags

from deep_image import constants

flags.DEFINE_list("devices", ["1", "2", "4", "8", "16", "32", "64"], "Device counts N.")
flags.DEFINE_enum("variant", "vgg16", ["vgg11", "vgg16", "vgg19"], "Model.")
flags.DEFINE_float("width", 1.0, "Width multiplier.")
flags.DEFINE_integer("crop", 224, "Input size.")
flags.DEFINE_integer("num_classes", 1000, "Classes (ILSVRC: 1000).")
flags.DEFINE_integer("per_device", constants.SLICES_PER_DEVICE,
                     "Images per device per step (§3.3: slices = 64).")
flags.DEFINE_integer("node_size", 4, "GPUs per node: the model axis of the hybrid rows.")
flags.DEFINE_float("mfu", 0.5, "Assumed model FLOP utilization of the table's devices.")
flags.DEFINE_float("overlap", 1.0, "Fraction of compute the butterfly's exchange can hide "
                   "under (lazy update); 0 = none.")
flags.DEFINE_float("latency_us", 2.0, "Per-hop latency of a collective, microseconds.")
flags.DEFINE_float("epoch_images", 1_281_167, "Images per epoch (ILSVRC-2012 train).")
flags.DEFINE_float("compute_seconds", 0.0, "Measured step time of one device at --per_device "
                   "images (bench.step); adds a 'measured' device.")
flags.DEFINE_float("link_gbps", 400.0, "Link bandwidth of the measured device, Gb/s.")
flags.DEFINE_float("intra_node_gbps", 3600.0, "Bandwidth inside a node of the measured "
                   "device, Gb/s.")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Compute dtype of the "
                  "measured device.")
flags.DEFINE_string("json", None, "Write rows here.")
flags.DEFINE_string("plot", None, "Write a Figure-2-like plot here (PNG).")
FLAGS = flags.FLAGS

# §2: Minwa's K40m (4.29 TFLOPS single precision), 4 per server on PCIe 3.0 x16 (~126 Gb/s
# each way), servers on FDR InfiniBand (56 Gb/s). A modern node: H100 (989 TFLOPS dense
# bfloat16), NVLink 4 inside the node (450 GB/s each way), one 400 Gb/s InfiniBand port per GPU.
HARDWARE = [
    {"hardware": "K40m + FDR IB 56 Gb/s (paper)", "peak_tflops": 4.29, "link_gbps": 56.0,
     "intra_node_gbps": 126.0, "dtype": "float32"},
    {"hardware": "H100 + IB 400 Gb/s", "peak_tflops": 989.0, "link_gbps": 400.0,
     "intra_node_gbps": 3600.0, "dtype": "bfloat16"},
]
STRATEGIES = ("data", "model_data", "hybrid")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1,
                "pred": 1, "f64": 8, "s64": 8}
_COLLECTIVE = re.compile(r"=\s*(\(.*?\)|\S+)\s+(all-gather|reduce-scatter|all-reduce|"
                         r"all-to-all|collective-permute)(?:-start)?\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_RING = {"all-gather": 1, "reduce-scatter": 1, "all-reduce": 2, "all-to-all": 1,
         "collective-permute": 1}


def _bytes(shape_text: str) -> int:
    return sum(_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _SHAPE.findall(shape_text))


def _first_group(line: str, devices: int) -> list[int]:
    """Device ids of the first replica group of a collective (explicit or iota form)."""
    m = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
    if m:
        return [int(d) for d in m.group(1).split(",")]
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:
        ids = np.arange(math.prod(int(d) for d in m.group(3).split(",")))
        ids = ids.reshape([int(d) for d in m.group(3).split(",")])
        if m.group(4):
            ids = ids.transpose([int(d) for d in m.group(4).split(",")])
        return ids.reshape(int(m.group(1)), int(m.group(2)))[0].tolist()
    return list(range(devices))


_LOWERED = re.compile(r'"stablehlo\.(all_gather|reduce_scatter|all_reduce)".*?'
                      r'->\s*tensor<([\dx]+)x(\w+)>', re.DOTALL)
_FLOATS = ("bf16", "f16", "f32")


def lowered_types(stablehlo: str) -> dict:
    """{(kind, dims): element type} of the collectives as JAX emitted them. XLA's CPU backend
    promotes bfloat16 collectives to float32; a GPU keeps them in bfloat16, so bytes count
    at the emitted type."""
    return {(kind.replace("_", "-"), tuple(int(d) for d in dims.split("x"))): dtype
            for kind, dims, dtype in _LOWERED.findall(stablehlo)}


def collectives(hlo: str, devices: int, emitted: dict | None = None,
                node_size: int = 4) -> list[dict]:
    """Every collective of a compiled (optimized) HLO module, synchronous or async (`-start`),
    one array or a tuple of them: kind, scope, group size, result shapes, the per-device payload (reduce-scatter: its input), the ring bytes one device sends, and
    whether its group fits in one node of `node_size` devices. `emitted` (from
    `lowered_types`) restores element types the CPU backend promoted."""
    from deep_image.parallel.butterfly import GATHER_SCOPE, SYNC_SCOPE
    out = []
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m:
            continue
        kind, shape = m.group(2), m.group(1)
        group = _first_group(line, devices)
        g = len(group)
        one = _SHAPE.fullmatch(shape.split("{")[0])
        if one and emitted:
            dims = tuple(int(d) for d in one.group(2).split(",") if d)
            dtype = emitted.get((kind, dims))
            if dtype in _FLOATS and dtype != one.group(1):
                shape = f"{dtype}[{one.group(2)}]"
        payload = _bytes(shape) * (g if kind == "reduce-scatter" else 1)
        scope = ("butterfly_sync" if SYNC_SCOPE in line else
                 "lazy_gather" if GATHER_SCOPE in line else "activations")
        out.append({"kind": kind, "scope": scope, "group": g, "payload_bytes": payload,
                    "shapes": [f"{dt}[{dims}]" for dt, dims in _SHAPE.findall(shape)],
                    "op_names": " ".join(re.findall(r'op_name="([^"]*)"', line)),
                    "intra_node": len({d // node_size for d in group}) == 1,
                    "ring_bytes": _RING[kind] * (g - 1) / g * payload if g > 1 else 0.0})
    return out


def _config(strategy: str, devices: int, dtype: str):
    from deep_image import config as config_lib
    c = config_lib.base()
    c.model.variant, c.model.width, c.model.dtype = FLAGS.variant, FLAGS.width, dtype
    c.data.scale = c.data.crop = FLAGS.crop
    c.batch_size = FLAGS.per_device * devices
    c.parallelism = "data" if strategy == "data" else "model_data"
    model = min(FLAGS.node_size, devices) if strategy == "hybrid" else 1
    c.mesh = (("data", devices // model), ("model", model))
    return c


def compile_one(strategy: str, devices: int, dtype: str) -> dict:
    """Compiles one train step from abstract shapes; returns its bytes and memory."""
    import jax
    import jax.numpy as jnp

    from deep_image.parallel import mesh as mesh_lib
    from deep_image.training import setup as setup_lib

    c = _config(strategy, devices, dtype)
    mesh = mesh_lib.make_mesh(c.mesh, jax.devices()[:devices])
    run = setup_lib.build(c, FLAGS.num_classes, mesh=mesh, abstract=True)
    state, layout = run.state, run.layout
    batch_sharding = mesh_lib.batch_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct((c.batch_size, c.data.crop, c.data.crop, 3),
                                           jnp.uint8, sharding=batch_sharding),
             "label": jax.ShapeDtypeStruct((c.batch_size,), jnp.int32, sharding=batch_sharding)}
    lowered = run.train_step.lower(state, batch)
    compiled = lowered.compile()
    ops = collectives(compiled.as_text(), devices, lowered_types(lowered.as_text()),
                      FLAGS.node_size)

    def per_device(tree):
        return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(tree))

    # the minimum: each float32 gradient block summed once among the g devices that hold a
    # copy (reduce-scatter) and the weights sent back in the dtype the forward pass uses
    # (all-gather: 2 bytes in bfloat16 runs)
    forward = {(k, n): jnp.dtype(d).itemsize for k, v in run.model.forward_dtypes().items()
               for n, d in v.items()}
    optimum = sum((lf.owners - 1) / lf.owners * lf.local_size * (4 + forward[k, n])
                  for k, v in layout.leaves.items() for n, lf in v.items())
    memory = compiled.memory_analysis()
    sync = [o for o in ops if o["scope"] != "activations"]
    act = [o for o in ops if o["scope"] == "activations"]
    return {
        "parallelism": strategy, "devices": devices, "mesh": dict(mesh.shape), "dtype": dtype,
        "grad_sync_bytes_per_device": sum(o["ring_bytes"] for o in sync),
        "ring_optimum_bytes": optimum,
        "activation_bytes_per_device": sum(o["ring_bytes"] for o in act),
        "grad_sync_collectives": len(sync), "activation_collectives": len(act),
        "collectives": _summary(ops),
        "param_bytes_per_device": per_device(state.params),
        "opt_state_bytes_per_device": per_device(state.opt_state),
        "temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
        "_ops": ops,
    }


def _summary(ops):
    out = {}
    for o in ops:
        key = f"{o['scope']}/{o['kind']}"
        s = out.setdefault(key, {"count": 0, "payload_bytes": 0, "ring_bytes": 0.0})
        s["count"] += 1
        s["payload_bytes"] += o["payload_bytes"]
        s["ring_bytes"] += o["ring_bytes"]
    return out


def predict(row: dict, hw: dict, compute_s: float, overlap: float) -> float:
    """Seconds per step on `hw`: compute, plus activation exchanges, plus the part of the
    butterfly's exchange that the lazy update cannot hide under `overlap` x compute."""
    lat = FLAGS.latency_us * 1e-6

    def seconds(ops):
        return sum(o["ring_bytes"] * 8 / 1e9 / hw["intra_node_gbps" if o["intra_node"] else
                                                 "link_gbps"]
                   + (o["group"] - 1) * lat * _RING[o["kind"]] for o in ops if o["group"] > 1)
    sync = seconds([o for o in row["_ops"] if o["scope"] != "activations"])
    act = seconds([o for o in row["_ops"] if o["scope"] == "activations"])
    return compute_s + act + max(0.0, sync - overlap * compute_s)


def crossover(rows, hw_name, key="predicted_speedup") -> int | None:
    """The smallest N from which data parallelism stays faster than model-data."""
    by = {(r["parallelism"], r["devices"]): r[key] for r in rows if r["hardware"] == hw_name}
    ns = sorted(n for (p, n) in by if p == "data" and n > 1 and ("model_data", n) in by)
    for i, n in enumerate(ns):
        if all(by[("data", m)] > by[("model_data", m)] for m in ns[i:]):
            return n
    return None


def main(argv):
    del argv
    import jax
    from deep_image.models.vgg import multiply_adds

    counts = sorted({int(n) for n in FLAGS.devices})
    # simulated CPU devices to compile for, set before JAX starts a backend
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", counts[-1])
    hardware = [dict(h) for h in HARDWARE]
    if FLAGS.compute_seconds > 0:
        hardware.append({"hardware": "measured", "compute_seconds": FLAGS.compute_seconds,
                         "link_gbps": FLAGS.link_gbps, "intra_node_gbps": FLAGS.intra_node_gbps,
                         "dtype": FLAGS.dtype})
    flops = 6 * multiply_adds(FLAGS.variant, FLAGS.width, FLAGS.crop, FLAGS.num_classes)
    compiled = {}
    for dtype in sorted({h["dtype"] for h in hardware}):
        for strategy in STRATEGIES:
            for n in counts:
                compiled[strategy, n, dtype] = compile_one(strategy, n, dtype)
                print(f"compiled {strategy:<10} N={n:<3} {dtype}", flush=True)
    rows = []
    for hw in hardware:
        t_c = hw.get("compute_seconds") or (flops * FLAGS.per_device /
                                            (hw["peak_tflops"] * 1e12 * FLAGS.mfu))
        for strategy in STRATEGIES:
            first = compiled[strategy, counts[0], hw["dtype"]]
            for n in counts:
                row = dict(compiled[strategy, n, hw["dtype"]])
                t = predict(row, hw, t_c, FLAGS.overlap)
                t0 = predict(row, hw, t_c, 0.0)
                row.update(
                    hardware=hw["hardware"], compute_seconds=t_c, predicted_step_seconds=t,
                    predicted_epoch_hours=FLAGS.epoch_images / (FLAGS.per_device * n) * t / 3600,
                    predicted_speedup=n * predict(first, hw, t_c, FLAGS.overlap) / (counts[0] * t),
                    predicted_speedup_no_overlap=n * predict(first, hw, t_c, 0.0) / (counts[0] * t0))
                rows.append(row)
    _print(rows, hardware)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"variant": FLAGS.variant, "width": FLAGS.width, "crop": FLAGS.crop,
                       "per_device": FLAGS.per_device, "mfu": FLAGS.mfu,
                       "overlap": FLAGS.overlap, "latency_us": FLAGS.latency_us,
                       "gflop_per_image": flops / 1e9,
                       "crossover": {h["hardware"]: crossover(rows, h["hardware"])
                                     for h in hardware},
                       "crossover_no_overlap": {
                           h["hardware"]: crossover(rows, h["hardware"],
                                                    "predicted_speedup_no_overlap")
                           for h in hardware},
                       "rows": [{k: v for k, v in r.items() if k != "_ops"} for r in rows]},
                      f, indent=1)
    if FLAGS.plot:
        _plot(rows, hardware, FLAGS.plot)


def _mb(x):
    return f"{x / 2**20:,.1f}"


def _print(rows, hardware):
    print(f"\n{FLAGS.variant} x{FLAGS.width:g} at {FLAGS.crop}px, {FLAGS.per_device} images "
          "per device; MiB per device per step (ring algorithm)")
    print(f"{'parallelism':<11}{'N':>4}{'dtype':>9}{'grad sync':>11}{'ring opt':>10}"
          f"{'sync/opt':>9}{'activ.':>9}{'params':>9}{'opt st.':>9}")
    for dtype in sorted({h["dtype"] for h in hardware}):
        first = next(h["hardware"] for h in hardware if h["dtype"] == dtype)
        for r in (r for r in rows if r["hardware"] == first):
            ratio = (r["grad_sync_bytes_per_device"] / r["ring_optimum_bytes"]
                     if r["ring_optimum_bytes"] else float("nan"))
            print(f"{r['parallelism']:<11}{r['devices']:>4}{r['dtype']:>9}"
                  f"{_mb(r['grad_sync_bytes_per_device']):>11}{_mb(r['ring_optimum_bytes']):>10}"
                  f"{ratio:>9.4f}{_mb(r['activation_bytes_per_device']):>9}"
                  f"{_mb(r['param_bytes_per_device']):>9}{_mb(r['opt_state_bytes_per_device']):>9}")
    for hw in hardware:
        rs = [r for r in rows if r["hardware"] == hw["hardware"]]
        print(f"\n{hw['hardware']}: compute {rs[0]['compute_seconds'] * 1e3:.1f} ms per step "
              f"({hw['dtype']}); predicted speedup (epoch hours)")
        counts = sorted({r["devices"] for r in rs})
        print(f"{'parallelism':<11}" + "".join(f"{n:>15}" for n in counts))
        for s in STRATEGIES:
            cells = {r["devices"]: r for r in rs if r["parallelism"] == s}
            print(f"{s:<11}" + "".join(
                f"{cells[n]['predicted_speedup']:>7.1f} ({cells[n]['predicted_epoch_hours']:>5.2f})"
                for n in counts))
        x = crossover(rows, hw["hardware"])
        x0 = crossover(rows, hw["hardware"], "predicted_speedup_no_overlap")
        print("data parallelism faster than model-data from N = "
              f"{x or 'nowhere in this range'}; without the lazy update's overlap from N = "
              f"{x0 or 'nowhere in this range'}")


def _plot(rows, hardware, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"data": "o-", "model_data": "s--", "hybrid": "^:"}
    for i, hw in enumerate(hardware):
        for s in STRATEGIES:
            rs = sorted((r for r in rows if r["hardware"] == hw["hardware"]
                         and r["parallelism"] == s), key=lambda r: r["devices"])
            ns = [r["devices"] for r in rs]
            label = f"{s}, {hw['hardware']}"
            a.plot(ns, [r["predicted_epoch_hours"] for r in rs], styles[s], color=f"C{i}",
                   label=label)
            b.plot(ns, [r["predicted_speedup"] for r in rs], styles[s], color=f"C{i}",
                   label=label)
    ns = sorted({r["devices"] for r in rows})
    b.plot(ns, ns, color="0.7", lw=1, label="linear")
    for ax, title, ylabel in ((a, "(a) time per epoch", "hours per ILSVRC epoch"),
                              (b, "(b) speedup of going through images", "speedup vs 1 device")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2 if ax is b else 10)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("devices (64 images each)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    b.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{FLAGS.variant} at {FLAGS.crop}px: predicted from compiled collectives "
                 f"(MFU {FLAGS.mfu:g}, lazy-update overlap {FLAGS.overlap:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
