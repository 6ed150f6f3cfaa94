"""Shared test set-up: the repository root on sys.path (configs), small CPU-friendly defaults."""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "launch"))

import mtl  # noqa: E402,F401  (its XLA options, before a backend opens)
import jax  # noqa: E402

# Eight fake CPU devices for the whole session: sharding tests use all of them, the others a
# one-device mesh (config.mesh.data=1), so both run in one process.
jax.config.update("jax_num_cpu_devices", 8)

# launch/train.py keeps a persistent compilation cache ($JAX_COMPILATION_CACHE_DIR, else
# ~/.cache/mtl/jax_cache): the processes tests start share one under the temp dir instead (per
# xdist worker), so the many tiny runs compile each program once; a test may give its own.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"mtl-tests-jax-cache-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"))
# xdist's workers start with this environment (the controller loads this file first), so their
# own jax reads it too: every program, however fast it compiles, is then compiled once for the
# suite, not once per test that builds it (on a cold CI machine, most of the suite's time).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# The subset for a GPU or TPU (`-m "gpu and not cpu_only"`: README, launch/gpu_check.sh): the
# model, the step modes, training and checkpoints, the Gramians, FLOP counts and the trace reader,
# within gpu_check's time limit for it.
GPU_MODULES = frozenset({"test_checkpoints", "test_conflicts", "test_flops", "test_models",
                         "test_op_profile", "test_step_batched", "test_train"})


def pytest_configure(config):
  # Tests that only make sense on the CPU backend: its XLA flags, or the eight fake CPU devices
  # above (on a GPU or TPU host, jax.devices() is the accelerators). `-m "not cpu_only"` leaves
  # them out there.
  config.addinivalue_line("markers", "cpu_only: needs the CPU backend (its flags or its eight "
                          "fake devices)")
  config.addinivalue_line("markers", "gpu: in the subset for a GPU (conftest.GPU_MODULES)")


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.module.__name__.rpartition(".")[2] in GPU_MODULES:
      item.add_marker("gpu")
