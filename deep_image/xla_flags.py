"""XLA flags deep_image sets by default, before JAX creates a backend (on import of the
package): each only when the user's own XLA_FLAGS does not name it, so theirs always win. Which
set depends on the platform JAX will use (`platform()`: JAX_PLATFORMS, else a GPU plugin and a
GPU present) and on the jaxlib series (XLA aborts on a flag it does not know).

CPU: YNNPACK's convolutions off (`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`),
so XLA:CPU runs every convolution through Eigen; YNNPACK keeps the dots it takes by default.
jaxlib 0.10.2 hands convolutions to YNNPACK by default (some shapes). `bash docs/xla_cpu/ab.sh`
(bench.step, float32, batch 32, 2 cores, one run each, alternated): VGG-11 x1/4 at crop 64
310.8 images/s against 276.1 with jaxlib's setting; x1/8 at crop 56 (the main job) 792.3
against 702.2. Both settings agree with float64 to 1e-7 to 5e-7 (relative) on 8 of ResNet-18's
convolutions, forward and both gradients (`python docs/xla_cpu/conv_precision.py`). To run
with jaxlib's own setting, name the flag yourself:
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`. Added only on the
jaxlib series measured (`TESTED["cpu"]`): experimental flags come and go.

GPU: let the lazy update's all-gathers and the butterfly's reduce-scatters overlap compute.
- `--xla_gpu_enable_latency_hiding_scheduler=true` (jaxlib's default: false): schedules each
  asynchronous collective's start early and its done late, around independent compute.
- `--xla_gpu_all_gather_combine_threshold_bytes=0`: the lazy update gathers each layer's weights
  just before that layer needs them; combined, one all-gather would wait for the last of its
  layers (one gather for the whole model, nothing left to overlap). jaxlib's default: ~30 MB.
- `--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728`: the butterfly's reduce-scatters
  of small gradient blocks go out combined up to 128 MiB (jaxlib's default: ~30 MB).
Not set: `--xla_gpu_enable_pipelined_all_gather` / `_reduce_scatter` (and `_all_reduce`) move
collectives across the iterations of a while loop; the train step's loops (from the random
number generator) hold no collective, and each layer is its own code (no scan), so they do
nothing here. Each flag is known to XLA in jaxlib 0.10 (tests/test_xla_flags.py compiles with
them and reads them back from XLA's dumped options) and documented for jaxlib 0.11 (JAX's
docs/gpu_performance_tips.md at jax-v0.11.0); XLA marks the scheduler and the reduce-scatter
threshold "[Stable]".
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

DEFAULTS = {
    "cpu": {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"},
    "gpu": {"--xla_gpu_enable_latency_hiding_scheduler": "true",
            "--xla_gpu_all_gather_combine_threshold_bytes": "0",
            "--xla_gpu_reduce_scatter_combine_threshold_bytes": "134217728"},
}
# the jaxlib series each set is known to work on (setup.py allows jax >=0.10.2,<0.12)
TESTED = {"cpu": ("0.10.",), "gpu": ("0.10.", "0.11.")}


def jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _gpu_plugin() -> bool:
    """A JAX GPU plugin is installed (jax-cuda12/13-pjrt, jax-rocm*-pjrt), without importing it."""
    spec = importlib.util.find_spec("jax_plugins")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(m.name.startswith(("xla_cuda", "xla_rocm"))
               for m in pkgutil.iter_modules(spec.submodule_search_locations))


def _gpu_device(environ) -> bool:
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def platform(environ=os.environ, gpu_plugin: bool | None = None,
             gpu_device: bool | None = None) -> str:
    """The platform JAX will pick, guessed before any backend exists: JAX_PLATFORMS' first
    entry, else "gpu" when a GPU plugin is installed and a GPU is there, else "cpu"."""
    first = environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if first:
        return "gpu" if first in ("cuda", "rocm", "gpu") else first
    plugin = _gpu_plugin() if gpu_plugin is None else gpu_plugin
    device = _gpu_device(environ) if gpu_device is None else gpu_device
    return "gpu" if plugin and device else "cpu"


def defaults(platform_name: str, jaxlib: str) -> dict[str, str]:
    """The flags deep_image adds for this platform on this jaxlib (none outside the tested
    series)."""
    if not jaxlib.startswith(TESTED.get(platform_name, ())):
        return {}
    return DEFAULTS.get(platform_name, {})


def backend_started() -> bool:
    """Whether JAX has already created a backend (then XLA_FLAGS is no longer read)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started and started())


def apply(environ=os.environ, jaxlib: str | None = None,
          platform_name: str | None = None) -> list[str]:
    """Appends each default the user's XLA_FLAGS does not set; returns those it added."""
    jaxlib = jaxlib_version() if jaxlib is None else jaxlib
    platform_name = platform(environ) if platform_name is None else platform_name
    flags = environ.get("XLA_FLAGS", "")
    named = {f.split("=", 1)[0] for f in flags.split()}
    added = [f"{k}={v}" for k, v in defaults(platform_name, jaxlib).items() if k not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added


# Set on import; if a backend already exists (jax used before `import deep_image`), the flags
# reach only child processes, and the training log says so.
LATE = backend_started()
PLATFORM = platform()
ADDED = apply(platform_name=PLATFORM)


def describe(added=None, late=None, platform_name=None, jaxlib=None,
             environ=os.environ) -> str:
    """The training log's line: XLA_FLAGS and what deep_image added to it (this process's
    import, unless told otherwise)."""
    added = ADDED if added is None else added
    late = LATE if late is None else late
    platform_name = PLATFORM if platform_name is None else platform_name
    jaxlib = jaxlib_version() if jaxlib is None else jaxlib
    line = f"XLA_FLAGS={environ.get('XLA_FLAGS', '')!r}"
    if added and late:
        return (f"{line} (deep_image's defaults {' '.join(added)} were added after JAX had "
                "started a backend, so this process runs without them: import deep_image "
                "before using jax)")
    if platform_name in DEFAULTS and not jaxlib.startswith(TESTED[platform_name]):
        return (f"{line} (deep_image's {platform_name} defaults are for jaxlib "
                f"{'/'.join(s + 'x' for s in TESTED[platform_name])}; this is jaxlib "
                f"{jaxlib or 'unknown'}, so none were added)")
    if added:
        return f"{line} (deep_image's {platform_name} defaults added: {' '.join(added)})"
    return line
