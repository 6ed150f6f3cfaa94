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
