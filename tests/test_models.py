import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


def test_tasks_parts_drawn_together_are_each_tasks_own_draws():
  """init draws the heads, queries and tails of tasks that share a structure in one vmap (denoise_30
  and derain share a scale-1 tail): each is still its task's own draw from its task key, bit for
  bit, as a part built alone from that key."""
  cfg = ipt.ModelConfig(**ipt.SIZES["tiny"])
  model = ipt.IPT(cfg, tasks.get_all(["denoise_30", "sr_x2", "derain"]))
  key = jax.random.key(7)
  params = model.init(key)
  pure = lambda module: nnx.to_pure_dict(nnx.state(module))
  for spec in model.specs:
    task_key = jax.random.fold_in(jax.random.split(key)[1], tasks.task_id(spec.name))
    k_head, k_query, k_tail = jax.random.split(task_key, 3)
    jax.tree.map(np.testing.assert_array_equal, params["heads"][spec.name],
                 pure(ipt.Head(cfg, nnx.Rngs(k_head))))
    jax.tree.map(np.testing.assert_array_equal, params["tails"][spec.name],
                 pure(ipt.Tail(cfg, spec.scale, nnx.Rngs(k_tail))))
    np.testing.assert_array_equal(params["queries"][spec.name], ipt.embedding_std(cfg.init)
                                  * jax.random.normal(k_query, (cfg.num_tokens, cfg.token_dim)))


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


def test_attention_uses_cudnn_only_on_gpu_in_half_precision():
  assert ops.attention_implementation(jnp.bfloat16, 48, backend="gpu") == "cudnn"
  assert ops.attention_implementation(jnp.float32, 48, backend="gpu") == "softmax"  # fp16/bf16
  assert ops.attention_implementation(jnp.bfloat16, 48, backend="cpu") == "softmax"
  assert ops.attention_implementation(jnp.bfloat16, 50, backend="gpu") == "softmax"  # not 8-aligned


def test_attention_equals_dot_product_attention_values_and_gradients():
  # Scores spread over ~+-20 so that the softmax is far from uniform and the max-subtraction
  # matters; float32 throughout, so both sides agree to float32 rounding of sums over 32 keys.
  # Both at matmul precision 'highest': a GPU's default float32 matmul is TF32 (10-bit
  # mantissa, ~1e-3 relative per product), which would put each side 1e-3 off on its own.
  q, k, v, d_out = (jax.random.normal(key, (2, 32, 3, 8)) * 3
                    for key in jax.random.split(jax.random.key(0), 4))
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
  with jax.default_matmul_precision("highest"):
    out, vjp = jax.vjp(ops.attention, q, k, v)
    want, want_vjp = jax.vjp(reference, q, k, v)
    got_grads, want_grads = vjp(d_out), want_vjp(d_out)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  for got, expected in zip(got_grads, want_grads):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.abs(expected).max()))
  # bfloat16 inputs: the softmax runs in float32; the probabilities and the output are rounded
  # to bfloat16 (8 significant bits: steps of 2^-8 = 0.4%), a few steps of error on |out| < 10.
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  np.testing.assert_allclose(ops.attention(*low).astype(jnp.float32),
                             reference(*[x.astype(jnp.float32) for x in low]), rtol=0.02, atol=0.05)
  grads = jax.grad(lambda *a: jnp.sum(ops.attention(*a).astype(jnp.float32)), argnums=(0, 1, 2))(*low)
  assert all(g.dtype == jnp.bfloat16 and bool(jnp.isfinite(g.astype(jnp.float32)).all())
             for g in grads)


def _layers_config(**changes):
  # Two encoder and two decoder layers drawn independently (init 'flax'; 'torch' copies one
  # layer), so a scan that took them in another order, or twice the same, would show.
  return ipt.ModelConfig(**dict(ipt.SIZES["small"], patch_size=12, init="flax", **changes))


# Equality tests between two programs run at matmul precision 'highest': a GPU computes float32
# matmuls as TF32 by default (10-bit mantissa), and the two programs may pick different kernels;
# at 'highest' both compute float32 products on every backend and the float32 bounds below hold.
@jax.default_matmul_precision("highest")
@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_bfloat16_bias_gradients_are_summed_in_float32(layer):
  """A bias added in bfloat16 has its gradient, a sum over every pixel or token, summed in
  bfloat16: of 16 x 48 x 48 positive terms of about 1 the sum stalls near 2**9, where adding 1
  no longer changes it (99% error). Summed in float32 the error is at most n u = 73,728 x 2**-24
  = 0.44% (a sequential sum's bound, u float32's unit roundoff), whatever XLA's order."""
  dtype, rngs = jnp.bfloat16, nnx.Rngs(0)
  module = (ipt.Conv(8, 8, (3, 3), dtype=dtype, rngs=rngs) if layer == "conv"
            else ipt.Linear(8, 8, dtype=dtype, rngs=rngs))
  x = jax.random.normal(jax.random.key(1), (16, 48, 48, 8))
  x = x if layer == "conv" else x.reshape(-1, 8)
  graph, state = nnx.split(module)
  y, vjp = jax.vjp(lambda s: nnx.merge(graph, s)(x), state)
  assert y.dtype == dtype  # the output stays in the compute dtype
  cotangent = (1 + jax.random.uniform(jax.random.key(2), y.shape)).astype(dtype)  # in [1, 2]
  bias = np.asarray(vjp(cotangent)[0]["bias"][...], np.float64)
  exact = np.asarray(cotangent, np.float64).reshape(-1, 8).sum(0)
  n = y.size // 8  # terms per bias entry
  assert np.max(np.abs(bias - exact) / exact) <= n * 2.0 ** -24, np.abs(bias - exact) / exact


def test_scanned_layers_equal_the_per_layer_loop():
  model = ipt.IPT(_layers_config(), tasks.get_all(["sr_x2"]))
  params = model.init(jax.random.key(0))
  body, query = params["body"], params["queries"]["sr_x2"]
  feats = jax.random.normal(jax.random.key(1), (2, 12, 12, model.cfg.n_feats)) * 10
  _, tokens = model.body(body, feats, query)
  # The reference: the body's own modules, each layer merged from the per-layer tree and run in
  # a Python loop.
  m, layers = nnx.merge(model._body_def, body), ipt.unstack_layers(body)
  enc_def, dec_def = nnx.split(m.encoder)[0], nnx.split(m.decoder)[0]
  x = ops.unfold(feats, model.cfg.patch_dim)
  x = (x + m.pos_embed[...][None] + m.token_embed(x)).reshape(-1, x.shape[-1])
  for i in range(2):
    x = nnx.merge(enc_def, layers["encoder"][i])(x, 2)
  memory, queries = x, jnp.tile(query, (2, 1))
  for i in range(2):
    x = nnx.merge(dec_def, layers["decoder"][i])(x, memory, queries, 2)
  want = (m.out_mlp(x) + x).reshape(tokens.shape)
  # Identical float32 operations; only XLA's fusion inside and outside a scan may differ, by a
  # few ulps of activations of size ~10-100.
  np.testing.assert_allclose(tokens, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  assert not np.allclose(layers["encoder"][0]["attn"]["query"]["kernel"],
                         layers["encoder"][1]["attn"]["query"]["kernel"])


def test_layer_names_unstack_the_layer_axis_in_network_order():
  model = ipt.IPT(_layers_config(), tasks.get_all(["sr_x2"]))
  body = model.abstract_params()["body"]
  assert body["encoder"]["attn"]["query"]["kernel"].shape == (2, 288, 288)
  names, order = ipt.body_layer_order(body)
  assert len(names) == 3 + 2 * 12 + 2 * 18 + 4  # embeddings, 2 encoder, 2 decoder layers, MLP
  assert names[:5] == ["token_embed/bias", "token_embed/kernel", "pos_embed",
                       "encoder/0/attn/key/kernel", "encoder/0/attn/out/kernel"]
  assert names.index("encoder/1/attn/key/kernel") < names.index("decoder/0/cross_attn/key/kernel")
  assert names[-1] == "out_mlp/fc2/kernel"
  # The per-layer tree and back: the layout checkpoints written before the stacking hold.
  params = model.init(jax.random.key(0))["body"]
  per_layer = ipt.unstack_layers(params)
  assert ipt.is_per_layer(per_layer) and not ipt.is_per_layer(params)
  assert ipt.shared_layer_names(per_layer) == ipt.shared_layer_names(params)
  jax.tree.map(np.testing.assert_array_equal, ipt.stack_layers(per_layer), params)


@pytest.mark.parametrize("setting", [dict(remat="layer"), dict(scan_unroll=2),
                                     dict(remat="layer", scan_unroll=3)])
@jax.default_matmul_precision("highest")  # see test_scanned_layers_equal_the_per_layer_loop
def test_execution_settings_give_the_same_gradients(setting):
  plain, other = (ipt.IPT(_layers_config(**s), tasks.get_all(["sr_x2"])) for s in ({}, setting))
  params = plain.init(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (2, 12, 12, 3), maxval=255.0)
  loss = lambda model: jax.grad(lambda p: jnp.mean(jnp.abs(model.apply(p, "sr_x2", images))))
  got, want = jax.jit(loss(other))(params), jax.jit(loss(plain))(params)
  # The recomputed (remat) or unrolled layers run the same float32 operations; XLA may fuse them
  # otherwise, which moves a gradient by float32 rounding (~1e-6 of its leaf's scale).
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves(got)):
    scale = float(jnp.abs(a).max())
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
  with pytest.raises(ValueError, match="model.remat='all'; valid: 'none', 'layer'"):
    dataclasses.replace(plain.cfg, remat="all").validate()
  with pytest.raises(ValueError, match="model.scan_unroll=0; valid: an integer >= 1"):
    dataclasses.replace(plain.cfg, scan_unroll=0).validate()
