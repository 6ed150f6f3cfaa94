"""mtl's process-wide XLA options: added to XLA_FLAGS on import, never over a user's own value."""
import os
import subprocess
import sys

import pytest

from mtl import xla_options

pytestmark = pytest.mark.cpu_only  # the CPU backend's flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def test_flags_added_only_where_missing_and_known():
  assert xla_options.flags_to_add("", (0, 10)) == [FLAG]
  assert xla_options.flags_to_add("--xla_dump_to=/tmp/x", (0, 11)) == [FLAG]
  assert xla_options.flags_to_add(f"{FLAG}-individual_dot", (0, 10)) == []  # the user's value
  assert xla_options.flags_to_add("", (0, 9)) == []  # XLA aborts on flags it does not know
  assert xla_options.flags_to_add("", None) == []
  # A later jaxlib gets the flag only if its library still defines it.
  assert xla_options.flags_to_add("", (1, 2), knows=lambda names: True) == [FLAG]
  assert xla_options.flags_to_add("", (1, 2), knows=lambda names: False) == []
  # The installed jaxlib's library is searched for real: it holds its own flags' names.
  assert xla_options._library_knows(["xla_cpu_enable_fast_math"])
  assert not xla_options._library_knows(["xla_cpu_no_such_flag_anywhere"])
  environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  added = xla_options.apply(environ)
  assert environ["XLA_FLAGS"] == " ".join(["--xla_dump_to=/tmp/x"] + added)


def test_import_turns_off_single_threaded_ynnpack_convolutions():
  # A fresh process: import mtl, then compile a convolution. With the option in force XLA's own
  # (multi-threaded) convolution runs; jaxlib 0.10's default fuses it into a YNNPACK call.
  code = ("import mtl, jax, jax.numpy as jnp\n"
          "conv = lambda x, k: jax.lax.conv_general_dilated(\n"
          "    x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
          "x, k = jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32))\n"
          "print('ynn' in jax.jit(conv).lower(x, k).compile().as_text())\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  assert out[-1] == "False"
  env["XLA_FLAGS"] = f"{FLAG}individual_convolution"  # a user's own choice is theirs
  code = "import mtl, os; print(os.environ['XLA_FLAGS'])"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == f"{FLAG}individual_convolution"


def test_cpu_threads_is_read_from_the_environment_as_xla_reads_it():
  assert xla_options.cpu_threads({"PJRT_NPROC": "3", "NPROC": "5"}) == 3
  assert xla_options.cpu_threads({"NPROC": "5"}) == 5
  assert xla_options.cpu_threads({}) == len(os.sched_getaffinity(0))  # XLA's default: affinity
  environ = {}
  xla_options.set_cpu_threads(0, environ)
  assert environ == {}  # 0 leaves XLA its default
  xla_options.set_cpu_threads(2, environ)
  assert xla_options.cpu_threads(environ) == 2
  with pytest.raises(ValueError,
                     match=r"cpu_threads=-1 must be >= 0 \(0: every CPU the run may use\)"):
    xla_options.set_cpu_threads(-1, environ)


def test_a_run_whose_backend_has_other_threads_than_its_cpu_threads_is_refused(tmp_path):
  from experiments import tiny
  from mtl import run_state
  config = tiny.get_config()
  config.cpu_threads = xla_options.cpu_threads() + 1  # this process's pool is already sized
  with pytest.raises(ValueError, match=rf"cpu_threads={config.cpu_threads}, but XLA's CPU "
                                       rf"backend here has {config.cpu_threads - 1} threads"):
    run_state.prepare(config, str(tmp_path / "w"))


# A Gramian-shaped product (a few rows, a long inner dimension), in a fresh process whose XLA
# CPU pool has `threads` threads, on `cores`: its bytes.
GRAMIAN = """
import sys
import numpy as np
from mtl import xla_options
xla_options.set_cpu_threads(int(sys.argv[1]))
import jax
x = jax.random.normal(jax.random.key(0), (4, 1 << 20))
print(np.asarray(jax.jit(lambda x: x @ x.T)(x)).tobytes().hex())
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to differ")
def test_cpu_sums_depend_on_the_thread_count_not_on_the_cores():
  # Why a run's cpu_threads is in its config: Eigen splits a long sum by thread, so 1 and 2
  # threads round differently; a pinned study run and one alone compute alike at equal counts.
  def product(threads, cores):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PJRT_", "NPROC"))}
    return subprocess.run([sys.executable, "-c", GRAMIAN, str(threads)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores)).stdout
  one, every = sorted(os.sched_getaffinity(0))[:1], sorted(os.sched_getaffinity(0))
  assert product(1, one) == product(1, every)
  assert product(2, one) == product(2, every)
  assert product(1, one) != product(2, one)
