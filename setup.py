"""deep_image: "Deep Image: Scaling up Image Recognition" (Wu et al., 2015) in JAX/Flax."""

from setuptools import find_packages, setup

# Lower bounds are the versions tested on CPU (Python 3.11); upper bounds admit the GPU image's
# newer JAX (0.11) and stop before the next minor release of each library.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.14",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.14",
    "grain>=0.2.18,<0.3",
    "ml_collections>=1.1.0,<1.3",
    "absl-py>=2.5.1,<3",
    "tensorflow-datasets>=4.9.10,<4.10",
    "numpy>=2.4,<3",
    "opencv-python-headless>=5.0.0,<6",
    "tqdm>=4.67,<5",
    "tensorboardX>=2.6.5,<3",
    "matplotlib>=3.10,<4",
    "scipy>=1.17,<2",          # t intervals (claims study), .mat files (Oxford Flowers)
]

setup(
    name="deep_image",
    version="0.1.0",
    description="Deep Image (Wu et al., 2015): VGG at scale with SPMD sharding, in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["deep_image", "deep_image.*"]),
    install_requires=INSTALL_REQUIRES,
    # torch only for the weight-import test and bench (a CPU build on the CI machine image);
    # pytest-xdist runs the suite on two workers (pytest.ini), pytest-timeout fails a hang.
    # ml_dtypes (JAX's bfloat16 and float8 types; jax 0.10 admits >=0.5) below 0.7: 0.7.0's
    # extension takes 1.3 s to load, in every process the suite starts (2026-12-04, `python
    # -X importtime -c "import deep_image.train"`: 2.26 s with 0.7.0, 1.01 s with 0.6.0).
    extras_require={"test": ["pytest>=9.0,<10", "pytest-timeout>=2.4,<3",
                             "pytest-xdist>=3.8,<4", "torch==2.13.0", "ml_dtypes>=0.6,<0.7"]},
)
