"""XLA flags deep_image sets by default, before JAX creates a backend (on import of the
package): each only when the user's own XLA_FLAGS does not name it, so theirs always win.

CPU: YNNPACK fusions off (`--xla_cpu_experimental_ynn_fusion_type=`). Measured side by side
with `python -m deep_image.bench.step` (VGG-11 x1/4, batch 32, float32, 2 cores, jaxlib 0.10.2):
crop 64 269-294 images/s against 241-263 with them on; crop 56 321-380 against 321-336 (README,
"Measured"). The flag names an XLA:CPU option only; GPU backends ignore it.
"""

from __future__ import annotations

import os

DEFAULTS = {"--xla_cpu_experimental_ynn_fusion_type": ""}


def apply(environ=os.environ) -> list[str]:
    """Appends each default the user's XLA_FLAGS does not set; returns those it added."""
    flags = environ.get("XLA_FLAGS", "")
    named = {f.split("=", 1)[0] for f in flags.split()}
    added = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added


ADDED = apply()
