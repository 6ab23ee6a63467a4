"""deep_image: the system of "Deep Image: Scaling up Image Recognition" (Wu et al., 2015) in JAX."""

from deep_image import xla_flags as _xla_flags  # noqa: F401  (defaults before any backend)

__version__ = "0.1.0"
