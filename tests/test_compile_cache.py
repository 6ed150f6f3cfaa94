import os
import subprocess
import sys
import tempfile

import pytest

from mtl import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh process each time: the cache is process-wide configuration.
PROGRAM = """
import sys, jax, jax.numpy as jnp
from mtl import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
compile_cache.enable(sys.argv[1])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
compiled, seconds = compile_cache.compile_timed(f, jnp.ones((64, 64)), label="probe", log=None)
print(len(hits), float(compiled(jnp.ones((64, 64)))))
"""


def _run(directory):
  out = subprocess.run([sys.executable, "-c", PROGRAM, directory], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True)
  hits, value = out.stdout.split()
  return int(hits), float(value)


def test_second_process_loads_the_step_from_the_cache(tmp_path):
  cold_hits, cold_value = _run(str(tmp_path))
  assert cold_hits == 0 and os.listdir(tmp_path)  # compiled, then written
  warm_hits, warm_value = _run(str(tmp_path))
  assert warm_hits >= 1 and warm_value == cold_value


def test_empty_directory_is_refused():
  with pytest.raises(ValueError, match="compile cache directory"):
    compile_cache.enable("")


def test_flag_values_name_the_directory(monkeypatch, tmp_path):
  assert compile_cache.directory_from("off") == ""
  assert compile_cache.directory_from(str(tmp_path)) == str(tmp_path)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/shared/cache")
  assert compile_cache.directory_from("") == "/shared/cache"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # set but empty: none
  assert compile_cache.directory_from("") == ""
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("HOME", str(tmp_path))
  # expanded: a study hands it to its analyses' jax, which would make a folder named '~'
  assert compile_cache.directory_from("") == str(tmp_path / ".cache" / "mtl" / "jax_cache")


def test_a_run_traces_its_init_once_and_creates_the_seeds_state(monkeypatch):
  """build's abstract state and init_state's jit share one trace of the init (each trace is
  ~0.15 s of every run's start on a CPU), and the seed enters it as data: seeds 0 and 3 give
  the parameters of model.init(jax.random.key(seed))."""
  import jax
  import numpy as np
  from mtl import run_defaults, run_state
  from mtl.models import ipt
  calls, init = [], ipt.IPT.init
  monkeypatch.setattr(ipt.IPT, "init", lambda self, key: calls.append(key) or init(self, key))
  config = run_defaults.get_config("tiny")
  config.tasks, config.mesh.data = ("sr_x2",), 1
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    states = {}
    for seed in (0, 3):
      run.config.seed = seed
      states[seed] = run.init_state()
  assert len(calls) == 1  # the init's Python ran once: one trace for the run
  for seed, state in states.items():
    want = init(run.model, jax.random.key(seed))
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(state.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit, at its options


def _unwritable_folder(tmp_path):
  """An existing folder where no file can be created: a read-only one, or where the tests run as
  root (whom modes do not stop), /sys."""
  folder = tmp_path / "read-only"
  folder.mkdir()
  folder.chmod(0o555)
  for candidate in (str(folder), "/sys"):
    try:
      handle, probe = tempfile.mkstemp(dir=candidate)
    except OSError:
      if os.path.isdir(candidate):
        return candidate
      continue
    os.close(handle)
    os.remove(probe)
  pytest.skip("no existing folder here refuses a new file")


@pytest.mark.parametrize("kind", ["unwritable", "not creatable"])
def test_a_cache_folder_that_cannot_be_written_is_one_line_naming_off(tmp_path, kind):
  """Else jax warns at every program it cannot write, lines each, in the terminal and train.log;
  --compile_cache='' is the default folder, not none."""
  if kind == "unwritable":
    cache = _unwritable_folder(tmp_path)
    why = "is not writable ("
  else:
    (tmp_path / "file").write_text("x")
    cache, why = str(tmp_path / "file" / "cache"), ": Not a directory; "
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "launch/train.py", "--config=experiments/tiny.py:sr_x2",
       f"--workdir={workdir}", f"--compile_cache={cache}", "--config.mesh.data=1",
       "--config.total_steps=1", "--config.conflicts.every=0", "--config.eval.max_images=1",
       "--config.eval.max_side=48"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stderr.startswith(f"error: compile cache directory {cache!r}") and why in out.stderr
  assert out.stderr.endswith("; give a writable path, or --compile_cache=off to compile without "
                             "a cache\n") and out.stderr.count("\n") == 1, out.stderr[-2000:]
  assert not workdir.exists()
