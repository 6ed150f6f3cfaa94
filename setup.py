"""mtl: multi-task pre-training conflict analyzer for low-level vision (JAX)."""
from setuptools import find_packages, setup

setup(
    name="mtl",
    version="0.1.0",
    description="Train IPT-style multi-task restoration models in JAX and measure task conflicts.",
    packages=find_packages(include=["mtl", "mtl.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.9",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.9",
        "array_record>=0.8",
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "grain>=0.2.12",
        "matplotlib>=3.9",
        "tensorboard>=2.18",
        "scikit-image>=0.24",
        "pillow>=10",
        "numpy>=1.26",
        "scipy>=1.12",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.6"],
        # launch/benchmark.py --against=torch: the official PyTorch IPT, timed beside ours.
        "bench": ["torch>=2.1", "einops>=0.7"],
    },
)
