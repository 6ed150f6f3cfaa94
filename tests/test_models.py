import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl import tasks
from mtl.models import ipt

PAPER_TASKS = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")


def test_paper_parameter_count_matches_published_ipt():
  model = ipt.IPT(ipt.ModelConfig(**ipt.SIZES["paper"]), tasks.get_all(PAPER_TASKS))
  params = model.abstract_params()
  total = ipt.count_params(params)
  body_with_queries = ipt.count_params(params["body"]) + ipt.count_params(params["queries"])
  assert abs(total - 118_892_370) / 118_892_370 < 0.01
  assert abs(body_with_queries - 115_636_608) / 115_636_608 < 0.01
  # The layer sizes are IPT's exactly, so the counts are too.
  assert total == 118_892_370 and body_with_queries == 115_636_608
  assert ipt.count_params(params["heads"]["sr_x2"]) == 411_648
  tails = {t: ipt.count_params(params["tails"][t]) for t in PAPER_TASKS}
  assert tails == {"sr_x2": 149_443, "sr_x3": 334_083, "sr_x4": 297_155, "derain": 1_731,
                   "denoise_30": 1_731, "denoise_50": 1_731}


@pytest.mark.parametrize("task,side", [("sr_x2", 96), ("sr_x3", 144), ("sr_x4", 192),
                                       ("denoise_30", 48)])
def test_output_shapes_per_task(task, side):
  model = ipt.IPT(ipt.ModelConfig(**ipt.SIZES["tiny"]), tasks.get_all([task]))
  params = model.init(jax.random.key(0))
  out, tokens = model.apply(params, task, jnp.full((2, 48, 48, 3), 100.0), return_tokens=True)
  assert out.shape == (2, side, side, 3)
  assert tokens.shape == (2, 256, 16 * 9)


def test_unfold_fold_and_pixel_shuffle_are_layout_permutations():
  x = jnp.arange(2 * 6 * 6 * 4, dtype=jnp.float32).reshape(2, 6, 6, 4)
  tokens = ipt.unfold(x, 3)
  assert tokens.shape == (2, 4, 36)
  np.testing.assert_array_equal(tokens[0, 1].reshape(3, 3, 4), x[0, 0:3, 3:6])  # row-major
  np.testing.assert_array_equal(ipt.fold(tokens, 3, 6), x)
  maps = jnp.arange(1 * 2 * 2 * 8.0).reshape(1, 2, 2, 8)
  shuffled = ipt.pixel_shuffle(maps, 2)
  assert shuffled.shape == (1, 4, 4, 2)
  # Output pixel (2y+i, 2x+j) holds input channels [(2i+j)*C, (2i+j+1)*C) of input pixel (y, x).
  np.testing.assert_array_equal(shuffled[0, 1, 2], maps[0, 0, 1, 4:6])


def test_bad_sizes_are_refused_with_the_valid_choice():
  with pytest.raises(ValueError, match="patch_dim"):
    ipt.ModelConfig(**dict(ipt.SIZES["tiny"], patch_dim=5)).validate()
  with pytest.raises(ValueError, match="num_heads"):
    ipt.ModelConfig(**dict(ipt.SIZES["tiny"], num_heads=5)).validate()
