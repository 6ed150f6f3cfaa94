"""XLA compilation: the persistent cache (warm starts) and timed ahead-of-time compiles.

The training loop calls `enable(directory)` once before its first jit, and compiles each step
function with `compile_timed` so that the compile time of every step of a run is printed (a warm
start from the cache shows up there as a compile of well under a second).
"""
import os
import time

import jax


def enable(directory):
  """Persist every compiled executable under `directory` (created if missing); later processes
  with the same jax, backend, flags and program load them instead of compiling."""
  if not directory:
    raise ValueError("compile cache directory is empty; give a writable path, e.g. "
                     "~/.cache/mtl/xla")
  directory = os.path.expanduser(directory)
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  # Cache everything: the small steps compile in seconds on a CPU, and that is what a warm
  # start should skip.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return directory


def compile_timed(jitted, *args, label="step", log=print):
  """Lower and compile `jitted` for `args` (arrays or ShapeDtypeStructs); logs and returns
  (compiled executable, seconds). Call the executable in the loop: it never recompiles."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  if log:
    log(f"compiled {label} in {seconds:.1f} s")
  return compiled, seconds
