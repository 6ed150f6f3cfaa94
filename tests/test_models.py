import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl import tasks
from mtl.models import ipt, ops

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


def test_a_seed_gives_a_task_the_same_init_in_every_run_that_holds_it():
  """Seeds pair across study regimes: scratch sr_x2 and a joint run holding sr_x2 second share
  the body and sr_x2's head, query and tail bit for bit; another seed changes them."""
  cfg = ipt.ModelConfig(**ipt.SIZES["tiny"])
  alone = ipt.IPT(cfg, tasks.get_all(["sr_x2"])).init(jax.random.key(3))
  joint_model = ipt.IPT(cfg, tasks.get_all(["denoise_30", "sr_x2", "derain"]))
  joint = joint_model.init(jax.random.key(3))
  for part in ("heads", "queries", "tails"):
    jax.tree.map(np.testing.assert_array_equal, alone[part]["sr_x2"], joint[part]["sr_x2"])
  jax.tree.map(np.testing.assert_array_equal, alone["body"], joint["body"])
  other = joint_model.init(jax.random.key(4))  # another seed: another init
  assert not np.array_equal(other["queries"]["sr_x2"], joint["queries"]["sr_x2"])
  assert not np.array_equal(other["body"]["pos_embed"], joint["body"]["pos_embed"])
  assert not np.array_equal(joint["queries"]["sr_x2"], joint["queries"]["derain"])
  # The step keys each task's degradations by the same id (tests/test_train.py's independent
  # per-task reference uses those keys, so a position key there would fail).
  assert tasks.task_id("denoise_30") != tasks.task_id("sr_x2")


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
  tokens = ops.unfold(x, 3)
  assert tokens.shape == (2, 4, 36)
  np.testing.assert_array_equal(tokens[0, 1].reshape(3, 3, 4), x[0, 0:3, 3:6])  # row-major
  np.testing.assert_array_equal(ops.fold(tokens, 3, 6), x)
  maps = jnp.arange(1 * 2 * 2 * 8.0).reshape(1, 2, 2, 8)
  shuffled = ops.pixel_shuffle(maps, 2)
  assert shuffled.shape == (1, 4, 4, 2)
  # Output pixel (2y+i, 2x+j) holds input channels [(2i+j)*C, (2i+j+1)*C) of input pixel (y, x).
  np.testing.assert_array_equal(shuffled[0, 1, 2], maps[0, 0, 1, 4:6])


def test_bad_sizes_are_refused_with_the_valid_choice():
  with pytest.raises(ValueError, match="patch_dim"):
    ipt.ModelConfig(**dict(ipt.SIZES["tiny"], patch_dim=5)).validate()
  with pytest.raises(ValueError, match="num_heads"):
    ipt.ModelConfig(**dict(ipt.SIZES["tiny"], num_heads=5)).validate()


@pytest.mark.parametrize("cin,cout,k,side", [(8, 32, 3, 12),   # widening: im2col kernel gradient
                                             (8, 8, 5, 10),    # the heads' 5x5
                                             (8, 3, 3, 16),    # the tails' last conv
                                             (3, 8, 3, 9)])
def test_conv_matches_nnx_conv_in_value_and_gradients(cin, cout, k, side):
  from flax import nnx
  layer = nnx.Conv(cin, cout, (k, k), rngs=nnx.Rngs(0))
  layer.bias[...] = jax.random.normal(jax.random.key(3), (cout,))
  x = jax.random.normal(jax.random.key(1), (2, side, side, cin))
  weights = jax.random.normal(jax.random.key(2), (2, side, side, cout))
  graph, state = nnx.split(layer)

  def loss(fn, state, x):
    return jnp.sum(weights * fn(nnx.merge(graph, state), x))

  ours = jax.value_and_grad(lambda s, x: loss(ops.conv, s, x), argnums=(0, 1))(state, x)
  ref = jax.value_and_grad(lambda s, x: loss(lambda m, x: m(x), s, x), argnums=(0, 1))(state, x)
  # Both are float32 sums of the same k*k*cin products in a different order: a few ulps relative.
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()))


def test_patches_times_kernel_is_the_convolution():
  x = jax.random.normal(jax.random.key(0), (1, 7, 7, 4))
  kernel = jax.random.normal(jax.random.key(1), (5, 5, 4, 6))
  direct = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(ops.patches(x, 5, 5) @ kernel.reshape(-1, 6), direct,
                             rtol=1e-5, atol=1e-4)


def test_attention_uses_cudnn_only_on_gpu_in_half_precision():
  assert ops.attention_implementation(jnp.bfloat16, 48, backend="gpu") == "cudnn"
  assert ops.attention_implementation(jnp.float32, 48, backend="gpu") == "xla"  # cuDNN: fp16/bf16
  assert ops.attention_implementation(jnp.bfloat16, 48, backend="cpu") == "xla"
  assert ops.attention_implementation(jnp.bfloat16, 50, backend="gpu") == "xla"  # not 8-aligned
  q = jax.random.normal(jax.random.key(0), (2, 16, 2, 8))
  np.testing.assert_allclose(ops.attention(q, q * 0.5, q), jax.nn.dot_product_attention(
      q, q * 0.5, q), rtol=1e-6)
