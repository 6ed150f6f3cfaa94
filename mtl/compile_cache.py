"""XLA compilation: the persistent cache (warm starts) and timed ahead-of-time compiles.

launch/train.py calls `enable(directory)` before its first jit (--compile_cache, on by default);
the loop prints each step function's compile time ("compiled the probe step in 0.3s" on a warm
start). The benchmark compiles ahead of time with `compile_timed`. `Counter` counts the programs
a process compiled and those it loaded from the cache (launch/train.py adds them to the run's
compute.json; a study prints their sum).
"""
import collections
import os
import tempfile
import threading
import time

import jax
from jax import monitoring

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
  # Expanded: a child process given it (the study's runs and analyses) may hand it to jax as is.
  return os.path.expanduser(os.environ.get("JAX_COMPILATION_CACHE_DIR", DEFAULT_DIR))


def enable(directory):
  """Persist every compiled executable under `directory` (created if missing); later processes
  with the same jax, backend, flags and program load them instead of compiling. A directory
  that cannot be created or written is refused (one line, ValueError): nothing is enabled."""
  if not directory:
    raise ValueError(f"compile cache directory is empty; give a writable path, e.g. "
                     f"{DEFAULT_DIR}")
  directory = os.path.expanduser(directory)
  fix = "give a writable path, or --compile_cache=off to compile without a cache"
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:
    raise ValueError(f"compile cache directory {directory!r}: {error.strerror}; {fix}") from None
  try:  # else jax warns at every program it cannot write (lines each, terminal and train.log)
    handle, probe = tempfile.mkstemp(prefix=".mtl-writable-", dir=directory)
    os.close(handle)
    os.remove(probe)
  except OSError as error:
    raise ValueError(f"compile cache directory {directory!r} is not writable "
                     f"({error.strerror}); {fix}") from None
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


# jax.monitoring events: every executable a jit call builds (XLA compile or persistent-cache
# load) ends with the first, named; a load is announced by the second just before.
_BUILT = "/jax/core/compile/backend_compile_duration"
_LOADED = "/jax/compilation_cache/cache_hits"


class Counter:
  """Programs this process compiled and loaded from the persistent cache, by function name,
  from jax.monitoring's events (listening from construction on, in every thread)."""

  def __init__(self):
    self.compiled, self.loaded = collections.Counter(), collections.Counter()
    self._hit = threading.local()  # the cache-hit event and its build's event share a thread
    monitoring.register_event_listener(self._on_event)
    monitoring.register_event_duration_secs_listener(self._on_duration)

  def _on_event(self, event, **kwargs):
    if event == _LOADED:
      self._hit.value = True

  def _on_duration(self, event, seconds, fun_name="?", **kwargs):
    del seconds, kwargs
    if event == _BUILT:
      (self.loaded if getattr(self._hit, "value", False) else self.compiled)[fun_name] += 1
      self._hit.value = False

  def close(self):
    monitoring.unregister_event_listener(self._on_event)
    monitoring.unregister_event_duration_listener(self._on_duration)

  def add_to(self, path):
    """Add the counts to the JSON file `path` (compute.json; written by the run) when it
    exists: programs_compiled, programs_loaded (totals over the run's attempts) and
    compiled_programs ({function name: times compiled}). Nothing built, nothing written (a
    finished run started again only reads its files)."""
    from mtl import files
    if not os.path.exists(path) or not (self.compiled or self.loaded):
      return
    record = files.read_json(path)
    names = collections.Counter(record.get("compiled_programs", {})) + self.compiled
    record.update(programs_compiled=record.get("programs_compiled", 0) + sum(self.compiled.values()),
                  programs_loaded=record.get("programs_loaded", 0) + sum(self.loaded.values()),
                  compiled_programs=dict(sorted(names.items())))
    files.write_json(path, record)
