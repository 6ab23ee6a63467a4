"""deep_image: the system of "Deep Image: Scaling up Image Recognition" (Wu et al., 2015) in JAX."""

__version__ = "0.1.0"
