"""Import an official IPT checkpoint (PyTorch state_dict, Chen et al. 2021) into mtl's parameter pytree.

The .pt file is read without torch by `mtl.models.torch_file` (restricted unpickling).

Layout differences mapped here (the official model is NCHW):
  conv weights OIHW -> HWIO; linear weights (out, in) -> kernels (in, out);
  MultiheadAttention's stacked in_proj (q; k; v) -> three bias-free projections;
  token features: torch's unfold orders a patch's features (C, kh, kw), mtl's (kh, kw, C), so every
    token-space axis (embeddings, LayerNorms, the inputs of q/k/v/fc1, the outputs of out/fc2) is
    permuted by the same fixed permutation; attention heads live in the projections' output axis,
    which is left alone;
  pixel shuffle: torch orders upsampler channels (C, r, r), mtl's depth-to-space (r, r, C).
The mean-shift convs must be the DIV2K mean shift mtl hard-codes (refused otherwise).
"""
import os
import re

import jax
import numpy as np

from mtl import tasks
from mtl.models import ipt, torch_file

# Task order of the published pre-trained model (its heads/tails by index): the scales
# [2, 3, 4, 1, 1, 1] of the official code; the scale-1 order (derain, denoise 30, denoise 50) is the
# one the released MindSpore port uses.
PRETRAINED_TASKS = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
# Released fine-tuned file names -> their one task.
RELEASED_NAMES = {"sr2": "sr_x2", "sr3": "sr_x3", "sr4": "sr_x4", "derain": "derain",
                  "denoise30": "denoise_30", "denoise50": "denoise_50"}

# ----------------------------------------------------------------------------- the layout


def _indices(state, pattern):
  return sorted({int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m})


def infer_layout(state, path="checkpoint"):
  """(model fields except num_heads, scales per task index) from the tensors' names and shapes."""
  need = {"body.linear_encoding.weight": 2, "body.position_encoding.pe.weight": 2,
          "body.query_embed.weight": 2, "body.encoder.layers.0.linear1.weight": 2,
          "head.0.0.weight": 4, "tail.0.1.weight": 4}  # name: its dimensions
  missing = [k for k in need if k not in state]
  if missing:
    raise ValueError(f"{path} is not an IPT state_dict: no {', '.join(missing)}")
  for k, ndim in need.items():
    if state[k].ndim != ndim or 0 in state[k].shape:
      raise ValueError(f"{path} is not an IPT state_dict: {k} has shape {state[k].shape}; an "
                       f"IPT's has {ndim} non-empty dimensions")
  n_feats = state["head.0.0.weight"].shape[0]
  num_tokens, dim = state["body.position_encoding.pe.weight"].shape
  patch_dim = int(round((dim / n_feats) ** 0.5))
  side = int(round(num_tokens ** 0.5))
  if patch_dim ** 2 * n_feats != dim or side ** 2 != num_tokens:
    raise ValueError(f"{path}: token dim {dim} / {num_tokens} tokens do not fit n_feats={n_feats} "
                     "with square patches on a square input")
  hidden = state["body.encoder.layers.0.linear1.weight"].shape[0]
  if hidden % dim:
    raise ValueError(f"{path}: MLP width {hidden} is not a multiple of the token dim {dim}")
  layers = {part: len(_indices(state, rf"body\.{part}\.layers\.(\d+)\."))
            for part in ("encoder", "decoder")}
  heads, tails = _indices(state, r"head\.(\d+)\."), _indices(state, r"tail\.(\d+)\.")
  if heads != list(range(len(heads))) or heads != tails:
    raise ValueError(f"{path}: heads {heads} and tails {tails} are not the same 0..T-1")
  scales = []
  for i in tails:
    ups = _indices(state, rf"tail\.{i}\.0\.(\d+)\.weight")
    ratio = [state[f"tail.{i}.0.{j}.weight"].shape[0] // n_feats for j in ups]
    scale = {(): 1, (4,): 2, (9,): 3, (4, 4): 4}.get(tuple(ratio))
    if scale is None:
      raise ValueError(f"{path}: tail {i} upsamples by channel ratios {ratio}; "
                       "known: none (x1), [4] (x2), [9] (x3), [4, 4] (x4)")
    scales.append(scale)
  fields = dict(n_feats=n_feats, patch_size=side * patch_dim, patch_dim=patch_dim,
                num_encoder_layers=layers["encoder"], num_decoder_layers=layers["decoder"],
                mlp_ratio=hidden // dim)
  return fields, scales


def default_tasks(scales, path=""):
  """The task names for a checkpoint's heads: the pre-trained order, or the released file's name."""
  if list(scales) == [tasks.get(t).scale for t in PRETRAINED_TASKS]:
    return PRETRAINED_TASKS
  if len(scales) == 1:
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    named = RELEASED_NAMES.get(stem.replace("ipt_", "").replace("-", "").replace("_", ""))
    if named and tasks.get(named).scale == scales[0]:
      return (named,)
    if scales[0] > 1:
      return (f"sr_x{scales[0]}",)
  raise ValueError(f"cannot tell the tasks of {path or 'the checkpoint'} (tail scales {scales}); "
                   "pass --tasks with one name per head, in order")


def _token_permutation(n_feats, patch_dim):
  """perm[m] = torch feature index of mtl feature m: mtl (kh, kw, C), torch (C, kh, kw)."""
  kh, kw, c = np.meshgrid(np.arange(patch_dim), np.arange(patch_dim), np.arange(n_feats),
                          indexing="ij")
  return (c * patch_dim * patch_dim + kh * patch_dim + kw).reshape(-1)


def _shuffle_permutation(channels, r):
  """perm[m] = torch conv channel feeding mtl depth-to-space channel m: mtl (i, j, C), torch (C, i, j)."""
  i, j, c = np.meshgrid(np.arange(r), np.arange(r), np.arange(channels), indexing="ij")
  return (c * r * r + i * r + j).reshape(-1)


def _conv(state, name, out_perm=None):
  kernel, bias = state.pop(f"{name}.weight").transpose(2, 3, 1, 0), state.pop(f"{name}.bias")
  if out_perm is not None:
    kernel, bias = kernel[..., out_perm], bias[out_perm]
  return {"kernel": kernel, "bias": bias}


def _linear(state, name, perm, token_in, token_out, bias=True):
  kernel = state.pop(f"{name}.weight").T
  if token_in:
    kernel = kernel[perm]
  if token_out:
    kernel = kernel[:, perm]
  out = {"kernel": kernel}
  if bias:
    b = state.pop(f"{name}.bias")
    out["bias"] = b[perm] if token_out else b
  return out


def _norm(state, name, perm):
  return {"scale": state.pop(f"{name}.weight")[perm], "bias": state.pop(f"{name}.bias")[perm]}


def _attention(state, name, perm):
  q, k, v = np.split(state.pop(f"{name}.in_proj_weight"), 3, axis=0)
  for extra in ("in_proj_bias", "out_proj.bias", "bias_k", "bias_v"):
    if f"{name}.{extra}" in state:
      raise ValueError(f"{name}.{extra}: attention with biases is not the IPT layout mtl models")
  return {"query": {"kernel": q.T[perm]}, "key": {"kernel": k.T[perm]},
          "value": {"kernel": v.T[perm]},
          "out": {"kernel": state.pop(f"{name}.out_proj.weight").T[:, perm]}}


def _mlp(state, first, second, perm):
  return {"fc1": _linear(state, first, perm, True, False),
          "fc2": _linear(state, second, perm, False, True)}


def _check_mean_shift(state, path):
  mean = ipt.DIV2K_RGB_MEAN
  for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
    weight, bias = state.pop(f"{name}.weight", None), state.pop(f"{name}.bias", None)
    if weight is None or bias is None:
      raise ValueError(f"{path}: no {name} conv; not an IPT state_dict")
    if not (np.allclose(weight.reshape(3, 3), np.eye(3), atol=1e-6)
            and np.allclose(bias, sign * mean, atol=1e-3)):
      raise ValueError(f"{path}: {name} is not the DIV2K mean shift (bias {np.round(bias, 3)}, "
                       f"expected {np.round(sign * mean, 3)}); mtl models only that one")


def torch_shapes(cfg: ipt.ModelConfig, task_names):
  """{name: shape} of every tensor of the official state_dict of `cfg` with `task_names`' heads.

  The query embedding's row count (one per head of the file) is None: a file may hold more heads
  than it imports.
  """
  d, hidden, c = cfg.token_dim, cfg.token_dim * cfg.mlp_ratio, cfg.n_feats
  linear = lambda name, n_out, n_in: {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}
  conv = lambda name, n_out, n_in, k: {f"{name}.weight": (n_out, n_in, k, k),
                                       f"{name}.bias": (n_out,)}
  norm = lambda name: {f"{name}.weight": (d,), f"{name}.bias": (d,)}
  attention = lambda name: {f"{name}.in_proj_weight": (3 * d, d),
                            f"{name}.out_proj.weight": (d, d)}
  shapes = {**conv("sub_mean", 3, 3, 1), **conv("add_mean", 3, 3, 1),
            **linear("body.linear_encoding", d, d),
            "body.position_encoding.pe.weight": (cfg.num_tokens, d),
            "body.position_encoding.position_ids": (1, cfg.num_tokens),
            "body.query_embed.weight": (None, cfg.num_tokens * d),
            **linear("body.mlp_head.0", hidden, d), **linear("body.mlp_head.3", d, hidden)}
  for part, n_layers, attns, norms in (("encoder", cfg.num_encoder_layers, ("self_attn",), 2),
                                       ("decoder", cfg.num_decoder_layers,
                                        ("self_attn", "multihead_attn"), 3)):
    for i in range(n_layers):
      name = f"body.{part}.layers.{i}"
      for attn in attns:
        shapes.update(attention(f"{name}.{attn}"))
      shapes.update({**linear(f"{name}.linear1", hidden, d), **linear(f"{name}.linear2", d, hidden)})
      for k in range(1, norms + 1):
        shapes.update(norm(f"{name}.norm{k}"))
  for t, task in enumerate(task_names):
    shapes.update(conv(f"head.{t}.0", c, 3, 3))
    for block in (1, 2):
      for k in (0, 2):
        shapes.update(conv(f"head.{t}.{block}.body.{k}", c, c, 5))
    factors = {1: [], 2: [2], 3: [3], 4: [2, 2]}[tasks.get(task).scale]
    for k, r in enumerate(factors):
      shapes.update(conv(f"tail.{t}.0.{2 * k}", c * r * r, c, 3))
    shapes.update(conv(f"tail.{t}.1", 3, c, 3))
  return shapes


def check_tensors(state, cfg: ipt.ModelConfig, task_names, path="checkpoint"):
  """Every tensor of `state` has its official shape and finite values (ValueError: one line).

  Runs before any reordering: a permutation would silently cut an oversized tensor down.
  """
  shapes = torch_shapes(cfg, task_names)
  # position_ids: a buffer some torch versions leave out of a state_dict
  missing = sorted(set(shapes) - set(state) - {"body.position_encoding.position_ids"})
  if missing:
    raise ValueError(f"{path}: tensors missing: {', '.join(missing[:4])}"
                     f"{' ...' if len(missing) > 4 else ''} ({len(missing)} of the "
                     f"{len(task_names)}-task model's {len(shapes)}; a damaged or cut file?)")
  for name, value in state.items():
    expected = shapes.get(name)
    if expected is not None and (len(value.shape) != len(expected) or any(
        e is not None and v != e for v, e in zip(value.shape, expected))):
      shown = str(tuple(-1 if e is None else e for e in expected)).replace("-1", "any")
      raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, the model expects "
                       f"{shown} (n_feats={cfg.n_feats}, token dim {cfg.token_dim})")
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
      bad = int(value.size - np.isfinite(value).sum())
      raise ValueError(f"{path}: {name!r} holds {bad} non-finite value(s) (NaN/inf) of "
                       f"{value.size}; refusing to import a broken checkpoint")


def convert(state, cfg: ipt.ModelConfig, task_names, path="checkpoint"):
  """The mtl parameter pytree (numpy float32) of an official state_dict, every tensor mapped."""
  check_tensors(state, cfg, task_names, path)
  state = dict(state)
  _check_mean_shift(state, path)
  perm = _token_permutation(cfg.n_feats, cfg.patch_dim)
  ids = state.pop("body.position_encoding.position_ids", None)
  if ids is not None and not np.array_equal(ids.reshape(-1), np.arange(cfg.num_tokens)):
    raise ValueError(f"{path}: position_ids are not 0..{cfg.num_tokens - 1}")
  queries = state.pop("body.query_embed.weight")
  if queries.shape[0] < len(task_names):
    raise ValueError(f"{path}: query_embed has {queries.shape[0]} rows for {len(task_names)} tasks")
  body = {
      "token_embed": _linear(state, "body.linear_encoding", perm, True, True),
      "pos_embed": state.pop("body.position_encoding.pe.weight")[:, perm],
      "out_mlp": _mlp(state, "body.mlp_head.0", "body.mlp_head.3", perm),
      "encoder": {}, "decoder": {},
  }
  for i in range(cfg.num_encoder_layers):
    name = f"body.encoder.layers.{i}"
    body["encoder"][i] = {
        "attn": _attention(state, f"{name}.self_attn", perm),
        "mlp": _mlp(state, f"{name}.linear1", f"{name}.linear2", perm),
        "norm1": _norm(state, f"{name}.norm1", perm), "norm2": _norm(state, f"{name}.norm2", perm)}
  for i in range(cfg.num_decoder_layers):
    name = f"body.decoder.layers.{i}"
    body["decoder"][i] = {
        "self_attn": _attention(state, f"{name}.self_attn", perm),
        "cross_attn": _attention(state, f"{name}.multihead_attn", perm),
        "mlp": _mlp(state, f"{name}.linear1", f"{name}.linear2", perm),
        **{f"norm{k}": _norm(state, f"{name}.norm{k}", perm) for k in (1, 2, 3)}}
  # One subtree per official layer, stacked into the model's layer axis.
  params = {"heads": {}, "body": ipt.stack_layers(body), "queries": {}, "tails": {}}
  for t, task in enumerate(task_names):
    params["heads"][task] = {
        "conv": _conv(state, f"head.{t}.0"),
        "res1": {"conv1": _conv(state, f"head.{t}.1.body.0"),
                 "conv2": _conv(state, f"head.{t}.1.body.2")},
        "res2": {"conv1": _conv(state, f"head.{t}.2.body.0"),
                 "conv2": _conv(state, f"head.{t}.2.body.2")}}
    params["queries"][task] = queries[t].reshape(cfg.num_tokens, cfg.token_dim)[:, perm]
    factors = {1: [], 2: [2], 3: [3], 4: [2, 2]}[tasks.get(task).scale]
    # Upsampler convs sit at even indices of the official Sequential (PixelShuffle between them).
    up = {k: _conv(state, f"tail.{t}.0.{2 * k}", _shuffle_permutation(cfg.n_feats, r))
          for k, r in enumerate(factors)}
    params["tails"][task] = {"conv": _conv(state, f"tail.{t}.1"), **({"up": up} if up else {})}
  if state:  # every tensor must have found its place
    names = ", ".join(repr(name)[:80] for name in sorted(state)[:4])  # a file's names, quoted
    raise ValueError(f"{path}: tensors not mapped: {names}{' ...' if len(state) > 4 else ''}")
  return _fit(params, ipt.IPT(cfg, tasks.get_all(task_names)).abstract_params(), path)


def _fit(params, abstract, path):
  """`params` in the exact structure of `abstract`, every shape checked."""
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}

  def take(key_path, leaf):
    key = jax.tree_util.keystr(key_path)
    if key not in flat:
      raise ValueError(f"{path}: nothing maps onto mtl parameter {key}")
    value = np.asarray(flat.pop(key), np.float32)
    if value.shape != leaf.shape:
      raise ValueError(f"{path}: {key} has shape {value.shape}, mtl expects {leaf.shape}")
    return value

  fitted = jax.tree_util.tree_map_with_path(take, abstract)
  if flat:
    raise ValueError(f"{path}: mapped tensors with no mtl parameter: {', '.join(sorted(flat)[:4])}")
  return fitted


def load(path, task_names=None, num_heads=None, size=None):
  """(ModelConfig, task names, params) of an official IPT checkpoint.

  `size` (a key of ipt.SIZES) must agree with the file's shapes and supplies num_heads, which no
  tensor records; `num_heads` overrides it. Bad input: ValueError with one line.
  """
  state = torch_file.read_state_dict(path)
  fields, scales = infer_layout(state, path)
  if size:
    if size not in ipt.SIZES:
      raise ValueError(f"size={size!r}; valid: {', '.join(ipt.SIZES)} (or '' to infer all but "
                       "num_heads from the file)")
    wrong = [f"{k}={fields[k]} (size {size}: {v})" for k, v in ipt.SIZES[size].items()
             if k in fields and fields[k] != v]
    if wrong:
      raise ValueError(f"{path} does not have the {size!r} size: {', '.join(wrong)}")
    num_heads = num_heads or ipt.SIZES[size]["num_heads"]
  if not num_heads:
    raise ValueError("the number of attention heads is not stored in a state_dict; pass "
                     "num_heads (or a size such as 'paper')")
  cfg = ipt.ModelConfig(num_heads=int(num_heads), **fields)
  cfg.validate()
  task_names = tuple(task_names) if task_names else default_tasks(scales, path)
  specs = tasks.get_all(task_names)
  if [s.scale for s in specs] != scales:
    raise ValueError(f"tasks {list(task_names)} have scales {[s.scale for s in specs]}, the "
                     f"checkpoint's tails {scales}; list one task per head, in order")
  return cfg, task_names, convert(state, cfg, task_names, path)

