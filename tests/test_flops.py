"""mtl.flops: the analytic model-FLOP count against XLA's own count of the same operations."""
import dataclasses

import jax
import jax.numpy as jnp
import pytest

from mtl import flops, losses, tasks
from mtl.models import ipt


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


def test_each_formula_is_xlas_count_of_its_operation():
  x, w = jnp.ones((1, 52, 52, 16)), jnp.ones((5, 5, 16, 8))
  # 'VALID' padding: every output takes all k*k taps, as the formula counts (48 x 48 outputs).
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert _xla_flops(conv, x, w) == flops.conv(5, 16, 8, 48, 48)
  assert _xla_flops(jnp.matmul, jnp.ones((256, 576)), jnp.ones((576, 2304))) == \
      flops.linear(576, 2304, 256)
  q = jnp.ones((1, 4, 64, 8))  # (B, heads, N, d): heads x d = 32
  scores_and_sum = lambda q: jnp.einsum("bhnm,bhmd->bhnd", jnp.einsum("bhnd,bhmd->bhnm", q, q), q)
  assert _xla_flops(scores_and_sum, q) == flops.attention(64, 64, 32)


@pytest.mark.parametrize("size", ["tiny", "small"])
@pytest.mark.parametrize("name", ["denoise_30", "sr_x2", "sr_x3", "sr_x4"])
def test_model_forward_count_matches_xla_within_padding_and_elementwise(size, name):
  cfg = ipt.ModelConfig(**ipt.SIZES[size])
  model = ipt.IPT(cfg, tasks.get_all((name,)))
  params = model.abstract_params()
  images = jax.ShapeDtypeStruct((2, 48, 48, 3), jnp.float32)
  counted = _xla_flops(lambda p, x: model.apply(p, name, x), params, images)
  # XLA's cost analysis counts a loop's body once (it does not know the trip count): the scanned
  # encoder and decoder count as one layer each.
  once = dataclasses.replace(cfg, num_encoder_layers=1, num_decoder_layers=1)
  analytic = 2 * flops.forward_per_image(once, model.specs[0].scale)
  # XLA skips the zero-padding taps of the 'SAME' convolutions (<5% of the convolutions, which are
  # <10% of the FLOPs at these sizes: <0.5%) and adds the elementwise work (O(D) per token and
  # layer against the matmuls' O(D^2), D >= 144: <0.5%), so the two agree within 1%.
  assert abs(counted / analytic - 1) < 0.01


def test_train_step_is_three_forwards_per_image_of_each_task():
  cfg = ipt.ModelConfig(**ipt.SIZES["paper"])
  assert flops.train_step(cfg, (2, 1), 8) == 3 * 8 * (flops.forward_per_image(cfg, 2)
                                                      + flops.forward_per_image(cfg, 1))
  # IPT at the paper size: 64.0 GFLOP per image in the body, forward; 97% of x1's forward, 92%
  # of x4's (README's Speed section)
  assert round(flops.body_forward(cfg) / 1e9, 1) == 64.0
  assert [round(flops.body_forward(cfg) / flops.forward_per_image(cfg, s), 2)
          for s in (1, 4)] == [0.97, 0.92]
  with pytest.raises(ValueError, match="scale=5"):
    flops.tail_forward(cfg, 5)


def test_the_contrastive_term_is_counted_as_xla_counts_its_gradient():
  # IPT's supervised contrastive term compares a task's B N body tokens pairwise: 2 (B N)^2 D
  # forward, 3x with its gradient; at the paper size and batch 256 that adds 29% to a step.
  cfg = ipt.ModelConfig(**ipt.SIZES["paper"])
  with_term = flops.train_step(cfg, (2,), 256, contrastive=True)
  assert with_term - flops.train_step(cfg, (2,), 256) == 3 * 2 * (256 * 256) ** 2 * 576
  assert round(with_term / flops.train_step(cfg, (2,), 256) - 1, 2) == 0.29
  tokens = jnp.ones((2, 256, 144))  # B = 2 images of N = 256 tokens of D = 144 (tiny)
  counted = _xla_flops(jax.grad(lambda t: losses.supervised_contrastive(t)), tokens)
  tiny = ipt.ModelConfig(**ipt.SIZES["tiny"])
  assert (tiny.num_tokens, tiny.token_dim) == (256, 144)
  # XLA adds the softmax and masks (O((B N)^2), against the matmuls' O((B N)^2 D), D = 144)
  assert 1.0 <= counted / (3 * flops.contrastive_forward(tiny, 2)) < 1.05, counted
