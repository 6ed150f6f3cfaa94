"""IPT (Chen et al., CVPR 2021): per-task heads and tails around one shared transformer body.

Layout is NHWC, pixels in [0, 255]. Parameters live in one pure pytree:
  {'heads': {task: ...}, 'body': {...}, 'queries': {task: (N, D)}, 'tails': {task: ...}}
`body` is the shared part whose per-task gradients the conflict analyzer compares; the task
queries are per task, so they sit beside the body, not in it. The body's encoder and decoder
layers are stacked: every leaf under body/encoder and body/decoder carries a leading layer axis,
and the body runs them with one `jax.lax.scan` each, so a body call puts one layer of each kind
into the compiled program, not 24. The conflict records stay per layer: `unstack_layers` gives
the per-layer view ('encoder/3/attn/query/kernel'), the one `shared_layer_names` names and the
layout checkpoints written before the stacking hold (`stack_layers` converts them).

Modules are Flax NNX; the trainer works on the pure pytree and merges it into modules inside
jit (`nnx.merge`), so every function here is a pure function of (params, inputs).

In bfloat16 (config.precision) the activations, residual stream and tail output are bfloat16;
parameters, LayerNorm statistics, the attention softmax, the losses and every gradient sum over
pixels or tokens (biases, position and query embeddings: `_add_bias`) are float32.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl import sharding
from mtl.models.layers import (  # noqa: F401  (the model's layer names, as ipt.<name>)
    GROUPINGS, LAYER_STACKS, block_of, body_layer_order, group_keys, is_per_layer,
    layer_stacked_leaves, map_bodies, module_of, network_order, network_rank, shared_layer_names,
    stack_layers, unstack_layers)
from mtl.models.ops import attention, fold, pixel_shuffle, unfold
from mtl.tasks import task_id

DIV2K_RGB_MEAN = np.array([0.4488, 0.4371, 0.4040], np.float32) * 255.0

# Named sizes. `paper` is IPT as published (body 115.6M parameters with 6 tasks).
SIZES = {
    "tiny": dict(n_feats=16, patch_size=48, patch_dim=3, num_heads=2, num_encoder_layers=1,
                 num_decoder_layers=1, mlp_ratio=4),
    "small": dict(n_feats=32, patch_size=48, patch_dim=3, num_heads=4, num_encoder_layers=2,
                  num_decoder_layers=2, mlp_ratio=4),
    "paper": dict(n_feats=64, patch_size=48, patch_dim=3, num_heads=12, num_encoder_layers=12,
                  num_decoder_layers=12, mlp_ratio=4),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  n_feats: int
  patch_size: int
  patch_dim: int
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
  mlp_ratio: int = 4
  init: str = "torch"  # torch: as the official IPT code initialises; flax: nnx's defaults
  remat: str = "none"  # none | layer: recompute each scanned layer in the backward pass
  scan_unroll: int = 1  # layers per iteration of the layer scans (fewer iterations, more code)
  body_calls: str = "auto"  # auto | batched | scanned | looped: how a step runs its body calls
  compute_dtype: str = "float32"

  # How the model is run, not what it is: a fine-tune or an import may change them.
  EXECUTION_FIELDS = ("remat", "body_calls", "scan_unroll")

  def parameter_fields(self):
    """{field: value} of the fields that fix the parameters' shapes (not how they were
    initialised or how the model runs): two configs that agree here restore each other's."""
    skip = {"init", "compute_dtype", *self.EXECUTION_FIELDS}
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

  def shape_differences(self, other):
    """[(field, self's value, other's)] of the parameter fields on which `other` differs."""
    mine, theirs = self.parameter_fields(), other.parameter_fields()
    return [(k, v, theirs[k]) for k, v in mine.items() if theirs[k] != v]

  @property
  def token_dim(self):
    return self.n_feats * self.patch_dim ** 2

  @property
  def num_tokens(self):
    return (self.patch_size // self.patch_dim) ** 2

  @classmethod
  def from_config(cls, model_cfg, compute_dtype="float32"):
    fields = {f.name for f in dataclasses.fields(cls)} - {"compute_dtype"}
    # Configs saved before `init` or an execution field existed lack them (their params are
    # restored, not initialised; the others only say how to run): the defaults apply.
    optional = {"init"} | set(cls.EXECUTION_FIELDS)
    cfg = cls(**{k: model_cfg[k] for k in fields if k in model_cfg or k not in optional},
              compute_dtype=compute_dtype)
    cfg.validate()
    return cfg

  def body_mode(self, backend=None):
    """How a step runs its several body calls (T tasks, or the probe's 2T half-batches):
    'batched', one vmapped computation; 'looped', K copies of the body in the program;
    'scanned', one copy run K times by jax.lax.map (compiles fastest, runs slower: the probe's
    K references are materialised copies of the body). 'auto': batched on GPUs and TPUs, whose
    batched matmuls keep the chip busy where K small ones do not; looped on CPUs, where it runs
    fastest (README, Speed)."""
    if self.body_calls == "auto":
      return "looped" if (backend or jax.default_backend()) == "cpu" else "batched"
    return self.body_calls

  def validate(self):
    if self.patch_size % self.patch_dim:
      raise ValueError(f"model.patch_size={self.patch_size} is not divisible by "
                       f"model.patch_dim={self.patch_dim}; choose a patch_dim that divides it")
    if self.token_dim % self.num_heads:
      raise ValueError(f"token dim n_feats*patch_dim^2={self.token_dim} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    for name in ("n_feats", "num_heads", "num_encoder_layers", "num_decoder_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
    if self.init not in INITS:
      raise ValueError(f"model.init={self.init!r}; valid: {', '.join(map(repr, INITS))}")
    if not isinstance(self.scan_unroll, int) or self.scan_unroll < 1:
      raise ValueError(f"model.scan_unroll={self.scan_unroll!r}; valid: an integer >= 1 (layers "
                       "per scan iteration)")
    if self.remat not in REMATS:
      raise ValueError(f"model.remat={self.remat!r}; valid: {', '.join(map(repr, REMATS))}")
    if self.body_calls not in BODY_CALLS:
      raise ValueError(f"model.body_calls={self.body_calls!r}; valid: "
                       f"{', '.join(map(repr, BODY_CALLS))}")
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"precision={self.compute_dtype!r}; valid: 'float32', 'bfloat16'")


# ----------------------------------------------------------------------------- initialisation

# init='torch' draws every parameter as the official IPT code (huawei-noah/Pretrained-IPT,
# model/ipt.py) initialises it: PyTorch's defaults plus that file's one re-draw (encoder in_proj).
INITS = ("torch", "flax")
REMATS = ("none", "layer")
BODY_CALLS = ("auto", "batched", "scanned", "looped")


def _torch_uniform(fan_in):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default nn.Linear / nn.Conv2d bias init."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dense_init(init, fan_in):
  """kernel_init/bias_init kwargs for an nnx.Linear (in, out) or nnx.Conv (HWIO) whose fan-in is
  `fan_in` (in, resp. H*W*I). 'torch': nn.Linear/nn.Conv2d's defaults, kaiming_uniform_(a=sqrt(5))
  = U(+-1/sqrt(fan_in)) for weights (variance 1/(3 fan_in)) and biases; 'flax': nnx's defaults."""
  if init == "flax":
    return {}
  return dict(kernel_init=jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
              bias_init=_torch_uniform(fan_in))


def attention_init(init, stacked_xavier):
  """kernel_init for the q/k/v projections (D, D). torch stores them stacked, in_proj_weight
  (3D, D): nn.MultiheadAttention's xavier_uniform_ on it is U(+-sqrt(6/(D+3D))), i.e.
  variance_scaling(0.5, fan_avg) on each (D, D) block (stacked_xavier, the decoder's); the
  official encoder layers re-draw it with kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(D))."""
  if init == "flax":
    return {}
  if stacked_xavier:
    return dict(kernel_init=jax.nn.initializers.variance_scaling(0.5, "fan_avg", "uniform"))
  return dict(kernel_init=jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"))


def embedding_std(init):
  """Std of the position and task-query embeddings: torch's nn.Embedding draws N(0, 1)."""
  return 1.0 if init == "torch" else 0.02


# ----------------------------------------------------------------------------- modules


def _add_bias(y, bias):
  """y + bias, the bias broadcast in its own dtype (float32) and then cast: its gradient, a sum
  over every pixel or token, is summed in float32 (summed in bfloat16, a tail bias's over
  16 x 192 x 192 pixels is 83% off float32's)."""
  return y + jnp.broadcast_to(bias, y.shape).astype(y.dtype)


class Linear(nnx.Linear):
  """nnx.Linear (its parameters, init and matmul) with the bias added by _add_bias."""

  def __call__(self, x):
    x, kernel = self.promote_dtype((x, self.kernel[...]), dtype=self.dtype)
    y = self.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
    return y if self.bias is None else _add_bias(y, self.bias[...])


class Conv(nnx.Conv):
  """nnx.Conv as the model uses it (NHWC, stride 1, 'SAME'; its parameters and init) with the
  bias added by _add_bias."""

  def __call__(self, x):
    x, kernel = self.promote_dtype((x, self.kernel[...]), dtype=self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", precision=self.precision,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return _add_bias(y, self.bias[...])


class ResBlock(nnx.Module):
  """conv 5x5 -> ReLU -> conv 5x5, plus identity (EDSR-style, no norm)."""

  def __init__(self, feats, dtype, rngs, init="flax"):
    kw = dense_init(init, 5 * 5 * feats)
    self.conv1 = Conv(feats, feats, (5, 5), dtype=dtype, rngs=rngs, **kw)
    self.conv2 = Conv(feats, feats, (5, 5), dtype=dtype, rngs=rngs, **kw)

  def __call__(self, x):
    return x + self.conv2(jax.nn.relu(self.conv1(x)))


class Head(nnx.Module):
  """Per-task head: conv 3x3 (3 -> n_feats), then 2 ResBlocks."""

  def __init__(self, cfg: ModelConfig, rngs):
    dtype = jnp.dtype(cfg.compute_dtype)
    self.conv = Conv(3, cfg.n_feats, (3, 3), dtype=dtype, rngs=rngs,
                         **dense_init(cfg.init, 3 * 3 * 3))
    self.res1 = ResBlock(cfg.n_feats, dtype, rngs, cfg.init)
    self.res2 = ResBlock(cfg.n_feats, dtype, rngs, cfg.init)

  def __call__(self, x):
    return self.res2(self.res1(self.conv(x)))


class Attention(nnx.Module):
  """Multi-head attention with bias-free projections (as torch MultiheadAttention(bias=False)).

  Tokens arrive flattened, (B*N, D): XLA's CPU backend computes the weight gradients of 2-D
  matmuls about twice as fast as of (B, N, D) ones.
  """

  def __init__(self, dim, num_heads, dtype, rngs, init="flax", stacked_xavier=False):
    self.num_heads = num_heads
    linear = lambda **kw: nnx.Linear(dim, dim, use_bias=False, dtype=dtype, rngs=rngs, **kw)
    qkv = attention_init(init, stacked_xavier)
    self.query, self.key, self.value = linear(**qkv), linear(**qkv), linear(**qkv)
    # torch's out_proj is an nn.Linear that _reset_parameters leaves at its default init.
    self.out = linear(**{k: v for k, v in dense_init(init, dim).items() if k == "kernel_init"})

  @jax.named_scope("attention")
  def __call__(self, q, k, v, batch):
    split = lambda x: x.reshape(batch, -1, self.num_heads, x.shape[-1] // self.num_heads)
    attended = attention(split(self.query(q)), split(self.key(k)), split(self.value(v)))
    return self.out(attended.reshape(q.shape))


class MLP(nnx.Module):
  def __init__(self, dim, hidden, dtype, rngs, init="flax"):
    self.fc1 = Linear(dim, hidden, dtype=dtype, rngs=rngs, **dense_init(init, dim))
    self.fc2 = Linear(hidden, dim, dtype=dtype, rngs=rngs, **dense_init(init, hidden))

  @jax.named_scope("mlp")
  def __call__(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x)))


def _norm(dim, rngs):
  # LayerNorm statistics in float32 whatever the compute dtype.
  return nnx.LayerNorm(dim, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)


def _normed(norm, x):
  with jax.named_scope("norm"):
    return norm(x).astype(x.dtype)


class EncoderLayer(nnx.Module):
  """Pre-LN: x + SA(LN x), then x + FFN(LN x)."""

  def __init__(self, cfg: ModelConfig, rngs):
    dim, dtype = cfg.token_dim, jnp.dtype(cfg.compute_dtype)
    self.norm1, self.norm2 = _norm(dim, rngs), _norm(dim, rngs)
    self.attn = Attention(dim, cfg.num_heads, dtype, rngs, cfg.init, stacked_xavier=False)
    self.mlp = MLP(dim, dim * cfg.mlp_ratio, dtype, rngs, cfg.init)

  def __call__(self, x, batch):
    h = _normed(self.norm1, x)
    x = x + self.attn(h, h, h, batch)
    return x + self.mlp(_normed(self.norm2, x))


class DecoderLayer(nnx.Module):
  """Pre-LN decoder; the task query embedding is added to queries and self-attention keys."""

  def __init__(self, cfg: ModelConfig, rngs):
    dim, dtype = cfg.token_dim, jnp.dtype(cfg.compute_dtype)
    self.norm1, self.norm2, self.norm3 = _norm(dim, rngs), _norm(dim, rngs), _norm(dim, rngs)
    self.self_attn = Attention(dim, cfg.num_heads, dtype, rngs, cfg.init, stacked_xavier=True)
    self.cross_attn = Attention(dim, cfg.num_heads, dtype, rngs, cfg.init, stacked_xavier=True)
    self.mlp = MLP(dim, dim * cfg.mlp_ratio, dtype, rngs, cfg.init)

  def __call__(self, x, memory, query_pos, batch):
    h = _normed(self.norm1, x)
    x = x + self.self_attn(h + query_pos, h + query_pos, h, batch)
    h = _normed(self.norm2, x)
    x = x + self.cross_attn(h + query_pos, memory, memory, batch)
    return x + self.mlp(_normed(self.norm3, x))


def _stacked(layers):
  """One module of the layers' structure whose every parameter stacks theirs on a leading axis."""
  graphdef, state = nnx.split(layers[0])
  stack = lambda *xs: jnp.stack(xs)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(
      stack, *[nnx.to_pure_dict(nnx.state(layer)) for layer in layers]))
  return nnx.merge(graphdef, state)


def _scan_layers(layers, x, call, remat=False, unroll=1):
  """x through the stacked `layers` in order: `call(layer, x)` once per layer, one copy of it in
  the program (jax.lax.scan; `unroll` copies, each loop iteration running that many layers).
  remat: jax.checkpoint on each layer, so the backward pass keeps only the layers' inputs and
  recomputes the rest (memory for large batches, ~1/3 more compute)."""
  graphdef, state = nnx.split(layers)

  def step(x, layer_state):
    return call(nnx.merge(graphdef, sharding.gathered(layer_state)), x), None

  if remat:
    step = jax.checkpoint(step, prevent_cse=False)  # inside scan CSE cannot undo it
  return jax.lax.scan(step, x, state, unroll=unroll)[0]


class Body(nnx.Module):
  """The shared transformer: unfold 3x3 patches -> encoder -> decoder(task query) -> MLP -> fold."""

  def __init__(self, cfg: ModelConfig, rngs):
    self.cfg = cfg
    dim, dtype = cfg.token_dim, jnp.dtype(cfg.compute_dtype)
    self.token_embed = Linear(dim, dim, dtype=dtype, rngs=rngs, **dense_init(cfg.init, dim))
    self.pos_embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.num_tokens, dim))
                               * embedding_std(cfg.init))
    if cfg.init == "torch":
      # As the official IPT code (huawei-noah/Pretrained-IPT, model/ipt.py) initialises it: its
      # encoder and decoder stacks are deep copies of one layer (_get_clones), so every encoder
      # layer starts from the same values, and every decoder layer too: one layer drawn, repeated.
      enc_key, dec_key = rngs.params(), rngs.params()
      self.encoder = _stacked([EncoderLayer(cfg, nnx.Rngs(enc_key))] * cfg.num_encoder_layers)
      self.decoder = _stacked([DecoderLayer(cfg, nnx.Rngs(dec_key))] * cfg.num_decoder_layers)
    else:  # layer by layer from one stream (the same draws as one module per layer), stacked
      self.encoder = _stacked([EncoderLayer(cfg, rngs) for _ in range(cfg.num_encoder_layers)])
      self.decoder = _stacked([DecoderLayer(cfg, rngs) for _ in range(cfg.num_decoder_layers)])
    self.out_mlp = MLP(dim, dim * cfg.mlp_ratio, dtype, rngs, cfg.init)

  def __call__(self, feats, query_pos):
    """feats (B, P, P, C), query_pos (N, D) -> (output map (B, P, P, C), tokens (B, N, D))."""
    dtype, batch = jnp.dtype(self.cfg.compute_dtype), feats.shape[0]
    x = unfold(feats, self.cfg.patch_dim).astype(dtype)
    x = _add_bias(x, self.pos_embed[...]) + self.token_embed(x)  # residual embedding
    x = x.reshape(-1, x.shape[-1])  # (B*N, D) from here on
    remat, unroll = self.cfg.remat == "layer", self.cfg.scan_unroll
    with jax.named_scope("encoder"):
      x = _scan_layers(self.encoder, x, lambda layer, x: layer(x, batch), remat, unroll)
    memory = x
    query_pos = jnp.tile(query_pos, (batch, 1)).astype(dtype)  # its gradient summed in float32
    with jax.named_scope("decoder"):
      x = _scan_layers(self.decoder, x, lambda layer, x: layer(x, memory, query_pos, batch),
                       remat, unroll)
    tokens = (self.out_mlp(x) + x).reshape(batch, -1, x.shape[-1])
    return fold(tokens, self.cfg.patch_dim, feats.shape[1]), tokens


class Tail(nnx.Module):
  """Per-task tail: pixel-shuffle upsampler (x2: one stage, x3: one, x4: two x2), conv 3x3 -> RGB."""

  def __init__(self, cfg: ModelConfig, scale, rngs):
    dtype, f = jnp.dtype(cfg.compute_dtype), cfg.n_feats
    factors = {1: [], 2: [2], 3: [3], 4: [2, 2]}
    if scale not in factors:
      raise ValueError(f"no tail for scale {scale}; valid scales: {sorted(factors)}")
    self.factors = tuple(factors[scale])
    kw = dense_init(cfg.init, 3 * 3 * f)
    self.up = nnx.List([Conv(f, f * r * r, (3, 3), dtype=dtype, rngs=rngs, **kw)
                        for r in self.factors])
    self.conv = Conv(f, 3, (3, 3), dtype=dtype, rngs=rngs, **kw)

  def __call__(self, x):
    for r, layer in zip(self.factors, self.up):
      x = pixel_shuffle(layer(x), r)
    return self.conv(x)


# ----------------------------------------------------------------------------- the model


class IPT:
  """Pure functions over the parameter pytree of an IPT model for an ordered set of tasks."""

  def __init__(self, cfg: ModelConfig, specs):
    self.cfg, self.specs = cfg, tuple(specs)
    self.task_names = tuple(s.name for s in self.specs)
    abstract = lambda build: nnx.split(nnx.eval_shape(build))[0]
    self._head_def = abstract(lambda: Head(cfg, nnx.Rngs(0)))
    self._body_def = abstract(lambda: Body(cfg, nnx.Rngs(0)))
    self._tail_defs = {s.scale: abstract(lambda s=s: Tail(cfg, s.scale, nnx.Rngs(0)))
                       for s in self.specs}

  def in_float32(self):
    """This model computing in float32 (itself where it does): for measurements a bfloat16
    run's rounding would bias."""
    if self.cfg.compute_dtype == "float32":
      return self
    return IPT(dataclasses.replace(self.cfg, compute_dtype="float32"), self.specs)

  def init(self, key):
    """Fresh parameters (a pure dict). Jit it with out_shardings to create them sharded."""
    body_key, tasks_key = jax.random.split(key)
    pure = lambda module: nnx.to_pure_dict(nnx.state(module))
    # Keyed by the task's name, not its place in the run: one seed, one sr_x2 head everywhere.
    keys = {s.name: jax.random.split(jax.random.fold_in(tasks_key, task_id(s.name)), 3)
            for s in self.specs}

    def per_task(names, which, build):
      # Tasks whose parts share a structure draw them in one vmap: the values of a draw per
      # task, bit for bit, but one copy of the init code in the program (it compiles faster).
      drawn = jax.vmap(build)(jnp.stack([keys[n][which] for n in names]))
      return {n: jax.tree_util.tree_map(lambda x, i=i: x[i], drawn) for i, n in enumerate(names)}

    tails = {}
    for scale in dict.fromkeys(s.scale for s in self.specs):
      tails.update(per_task([s.name for s in self.specs if s.scale == scale], 2,
                            lambda k, scale=scale: pure(Tail(self.cfg, scale, nnx.Rngs(k)))))
    names, std = list(self.task_names), embedding_std(self.cfg.init)
    query_shape = (self.cfg.num_tokens, self.cfg.token_dim)
    return {"heads": per_task(names, 0, lambda k: pure(Head(self.cfg, nnx.Rngs(k)))),
            "body": pure(Body(self.cfg, nnx.Rngs(body_key))),
            "queries": per_task(names, 1, lambda k: std * jax.random.normal(k, query_shape)),
            "tails": {n: tails[n] for n in names}}

  def abstract_params(self):
    return jax.eval_shape(self.init, jax.random.key(0))

  # The three stages, as pure functions. Inputs and outputs are in [0, 255].
  # Named scopes: the stages' names in the compiled program's op metadata (mtl.op_profile).
  @jax.named_scope("head")
  def head(self, head_params, images):
    return nnx.merge(self._head_def, sharding.gathered(head_params))(images - DIV2K_RGB_MEAN)

  @jax.named_scope("body")
  def body(self, body_params, feats, query_pos):
    # the stacked layers are gathered one at a time, in the layer scans
    outer = {k: v if k in LAYER_STACKS else sharding.gathered(v)
             for k, v in body_params.items()}
    return nnx.merge(self._body_def, outer)(feats, sharding.gathered(query_pos))

  def body_batched(self, body_params, feats, query_pos, stacked=False, scan=False):
    """The body on K inputs in one computation: feats (K, B, P, P, C), query_pos (K, N, D) ->
    (maps (K, B, P, P, C), tokens (K, B, N, D)). body_params: one tree for all K, or,
    stacked=True, one tree per input stacked on a leading K axis (the gradient with respect to
    it is each input's own). scan=False: a jax.vmap (unstacked parameters: the matmuls see the K
    batches as one, a concatenation along the batch, exact since the body works per image;
    stacked: K batched matmuls); scan=True: jax.lax.map, one body in the program run K times."""
    if scan:
      if stacked:
        return jax.lax.map(lambda a: self.body(*a), (body_params, feats, query_pos))
      return jax.lax.map(lambda a: self.body(body_params, *a), (feats, query_pos))
    return jax.vmap(self.body, in_axes=(0 if stacked else None, 0, 0))(body_params, feats,
                                                                       query_pos)

  @jax.named_scope("tail")
  def tail(self, tail_params, scale, feats):
    out = nnx.merge(self._tail_defs[scale], sharding.gathered(tail_params))(feats)
    return out.astype(jnp.float32) + DIV2K_RGB_MEAN

  def apply(self, params, task, images, return_tokens=False):
    """One task end to end: (B, P, P, 3) degraded inputs -> (B, P*s, P*s, 3) restorations."""
    spec = self.specs[self.task_names.index(task)]
    feats = self.head(params["heads"][task], images)
    res, tokens = self.body(params["body"], feats, params["queries"][task])
    out = self.tail(params["tails"][task], spec.scale, res + feats)
    return (out, tokens) if return_tokens else out


def count_params(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
