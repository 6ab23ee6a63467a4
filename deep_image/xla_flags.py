"""XLA flags deep_image sets by default, before JAX creates a backend (on import of the
package): each only when the user's own XLA_FLAGS does not name it, so theirs always win.

CPU: YNNPACK's convolutions off (`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`),
so XLA:CPU runs every convolution through Eigen; YNNPACK keeps the dots it takes by default.
jaxlib 0.10.2 hands convolutions to YNNPACK by default (some shapes). `bash docs/xla_cpu/ab.sh`
(bench.step, float32, batch 32, 2 cores, one run each, alternated): VGG-11 x1/4 at crop 64
310.8 images/s against 276.1 with jaxlib's setting; x1/8 at crop 56 (the main job) 792.3
against 702.2. Both settings agree with float64 to 1e-7 to 5e-7 (relative) on 8 of ResNet-18's
convolutions, forward and both gradients (`python docs/xla_cpu/conv_precision.py`). To run
with jaxlib's own setting, name the flag yourself:
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`. The flag names an
XLA:CPU option only; GPU backends ignore it. It is added only on the jaxlib series measured
(`TESTED`): XLA aborts on a flag it does not know, and experimental flags come and go.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

DEFAULTS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
TESTED = "0.10."          # the jaxlib series the defaults were measured on (setup.py allows more)


def jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def backend_started() -> bool:
    """Whether JAX has already created a backend (then XLA_FLAGS is no longer read)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started and started())


def apply(environ=os.environ, jaxlib: str | None = None) -> list[str]:
    """Appends each default the user's XLA_FLAGS does not set; returns those it added. Adds
    nothing on a jaxlib outside the tested series."""
    if not (jaxlib_version() if jaxlib is None else jaxlib).startswith(TESTED):
        return []
    flags = environ.get("XLA_FLAGS", "")
    named = {f.split("=", 1)[0] for f in flags.split()}
    added = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added


# Set on import; if a backend already exists (jax used before `import deep_image`), the flags
# reach only child processes, and the training log says so.
LATE = backend_started()
ADDED = apply()


def describe() -> str:
    """The training log's line: XLA_FLAGS and what deep_image added to it."""
    line = f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    if ADDED and LATE:
        return (f"{line} (deep_image's defaults {' '.join(ADDED)} were added after JAX had "
                "started a backend, so this process runs without them: import deep_image "
                "before using jax)")
    if not jaxlib_version().startswith(TESTED):
        return (f"{line} (deep_image's defaults were measured on jaxlib {TESTED}x; this is "
                f"jaxlib {jaxlib_version() or 'unknown'}, so none were added)")
    return f"{line} (deep_image's defaults added: {' '.join(ADDED)})" if ADDED else line
