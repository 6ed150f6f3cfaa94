"""XLA compilation: the persistent cache (warm starts) and timed ahead-of-time compiles.

launch/train.py calls `enable(directory)` before its first jit (--compile_cache, on by default);
the loop prints each step function's compile time ("compiled the probe step in 0.3s" on a warm
start). The benchmark compiles ahead of time with `compile_timed`.
"""
import os
import time

import jax

# Where launch/train.py and the study runs keep compiled steps unless told otherwise
# ($JAX_COMPILATION_CACHE_DIR, or --compile_cache=DIR|off).
DEFAULT_DIR = os.path.join("~", ".cache", "mtl", "jax_cache")


def directory_from(flag):
  """The cache directory a --compile_cache value means: 'off' -> '' (none); '' -> the
  environment's $JAX_COMPILATION_CACHE_DIR (set but empty: none), else DEFAULT_DIR."""
  if flag == "off":
    return ""
  if flag:
    return os.path.abspath(os.path.expanduser(flag))
  return os.environ.get("JAX_COMPILATION_CACHE_DIR", DEFAULT_DIR)


def enable(directory):
  """Persist every compiled executable under `directory` (created if missing); later processes
  with the same jax, backend, flags and program load them instead of compiling."""
  if not directory:
    raise ValueError("compile cache directory is empty; give a writable path, e.g. "
                     "~/.cache/mtl/xla")
  directory = os.path.expanduser(directory)
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:
    raise ValueError(f"compile cache directory {directory!r}: {error.strerror}; give a writable "
                     "path, or --compile_cache='' to compile without a cache") from None
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
