"""Shared test set-up: the repository root on sys.path (configs), small CPU-friendly defaults."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "launch"))

import jax  # noqa: E402

# Eight fake CPU devices for the whole session: sharding tests use all of them, the others a
# one-device mesh (config.mesh.data=1), so both run in one process.
jax.config.update("jax_num_cpu_devices", 8)

# launch/train.py keeps a persistent compilation cache ($JAX_COMPILATION_CACHE_DIR, else
# ~/.cache/mtl/jax_cache): none in the processes tests start, unless a test gives one.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")
