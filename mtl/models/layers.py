"""The IPT body's layer names and network order: the stacked layout (a leading layer axis under
body/encoder and body/decoder) and its per-layer view, the names the conflict records use, and
their groupings (layer, module, block, body). mtl.models.ipt re-exports these for its callers."""
import jax
import jax.numpy as jnp
import numpy as np


# The body's subtrees whose leaves carry the leading layer axis.
LAYER_STACKS = ("encoder", "decoder")


def _is_body(tree):
  return isinstance(tree, dict) and all(part in tree for part in LAYER_STACKS)


def _is_layer_index(key):
  return isinstance(key, int) or (isinstance(key, str) and key.isdigit())


def is_per_layer(body):
  """Whether a body tree is in the per-layer layout ({'encoder': {0: {...}, 1: ...}}), the one
  checkpoints written before the stacking hold, rather than the stacked one."""
  return _is_body(body) and all(
      isinstance(body[part], dict) and body[part] and all(map(_is_layer_index, body[part]))
      for part in LAYER_STACKS)


def unstack_layers(body, axis=0, take=None):
  """The per-layer view of a stacked body tree: {'encoder': {0: {...}, 1: ...}, ...}, every leaf
  of the encoder and decoder sliced along `axis` (0 for parameters, 1 for per-task gradients
  (T, layers, ...)); its flattening order is the per-layer leaves' (`shared_layer_names`).
  take(leaf, i): layer i of a leaf that is not an array (e.g. a ShapeDtypeStruct). Trees that are
  not a stacked body come back as they are."""
  if not _is_body(body) or is_per_layer(body):
    return body
  take = take or (lambda x, i: jax.lax.index_in_dim(x, i, axis, keepdims=False))
  out = dict(body)
  for part in LAYER_STACKS:
    count = jax.tree_util.tree_leaves(body[part])[0].shape[axis]
    out[part] = {i: jax.tree_util.tree_map(lambda x, i=i: take(x, i), body[part])
                 for i in range(count)}
  return out


def stack_layers(body):
  """The stacked layout of a per-layer body tree (layer keys 0, 1, ... as ints or strings, as
  orbax restores them); numpy leaves stay numpy. Stacked trees come back as they are."""
  if not is_per_layer(body):
    return body
  out = dict(body)
  for part in LAYER_STACKS:
    layers = [body[part][k] for k in sorted(body[part], key=int)]
    stack = lambda *xs: (np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs)
                         else jnp.stack(xs))
    out[part] = jax.tree_util.tree_map(stack, *layers)
  return out


def map_bodies(fn, tree):
  """`fn` applied to every body subtree of `tree`: the parameters' and those of the optimizer
  state that mirror them (Adam's moments)."""
  return jax.tree_util.tree_map(lambda x: fn(x) if _is_body(x) else x, tree, is_leaf=_is_body)


def layer_stacked_leaves(tree):
  """A tree of bools, `tree`'s structure: True for the leaves of a stacked body's encoder and
  decoder (they carry the layer axis), False elsewhere."""
  def mark(body):
    if is_per_layer(body):
      return jax.tree_util.tree_map(lambda _: False, body)
    return {k: jax.tree_util.tree_map(lambda _, s=k in LAYER_STACKS: s, v)
            for k, v in body.items()}
  marked = map_bodies(mark, tree)
  return jax.tree_util.tree_map(lambda x: x if isinstance(x, bool) else False, marked)


def shared_layer_names(body_params):
  """'/'-joined names of the body's per-layer leaves, in the per-layer tree's flattening order
  (the Gramians' L axis): a stacked leaf gives one name per layer ('encoder/3/attn/out/kernel')."""
  per_layer = jax.eval_shape(unstack_layers, body_params) if _is_body(body_params) else body_params
  paths = jax.tree_util.tree_flatten_with_path(per_layer)[0]
  key = lambda k: str(getattr(k, "key", getattr(k, "idx", k)))
  return ["/".join(key(k) for k in path) for path, _ in paths]


_BLOCK_RANK = {"token_embed": 0, "pos_embed": 1, "encoder": 2, "decoder": 3, "out_mlp": 4}


# Within a layer, the order the computation runs: IPT's layers are pre-norm (Chen et al. 2021),
# encoder norm1 > attn > norm2 > mlp, decoder norm1 > self_attn > norm2 > cross_attn > norm3 > mlp.
_PART_RANK = {"norm1": 0, "attn": 1, "self_attn": 1, "norm2": 2, "cross_attn": 3, "norm3": 4,
              "mlp": 5, "query": 0, "key": 1, "value": 2, "out": 3, "fc1": 0, "fc2": 1,
              "kernel": 0, "scale": 0, "bias": 1}


def network_rank(name):
  """A sort key putting body leaf (or sub-layer) names in the order the network runs them:
  block, layer index, then each sub-layer and leaf in computation order (kernel before bias)."""
  parts = name.split("/")
  indexed = len(parts) > 1 and parts[1].isdigit()
  rest = parts[2:] if indexed else parts[1:]
  return (_BLOCK_RANK.get(parts[0], len(_BLOCK_RANK)), int(parts[1]) if indexed else -1,
          tuple((_PART_RANK.get(p, len(_PART_RANK)), p) for p in rest))


def network_order(layer_names):
  """Permutation putting flattened (alphabetical) leaves in block order for the store (within
  a layer alphabetical: the stores of runs in progress keep it; a loaded record re-sorts its
  leaves by `network_rank`)."""
  def rank(i):
    parts = layer_names[i].split("/")
    index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    return (_BLOCK_RANK.get(parts[0], len(_BLOCK_RANK)), index, i)
  return sorted(range(len(layer_names)), key=rank)



GROUPINGS = ("layer", "module", "block", "body")


def block_of(layer_name):
  """The network block of a body leaf.

  'token_embed/*', 'pos_embed' -> 'embeddings'; 'encoder/<k>/*' -> 'encoder_<k>';
  'decoder/<k>/*' -> 'decoder_<k>'; 'out_mlp/*' -> 'output_mlp'; anything else -> its
  first path component.
  """
  parts = layer_name.split("/")
  if parts[0] in ("token_embed", "pos_embed"):
    return "embeddings"
  if parts[0] in ("encoder", "decoder") and len(parts) > 1 and parts[1].isdigit():
    return f"{parts[0]}_{parts[1]}"
  if parts[0] == "out_mlp":
    return "output_mlp"
  return parts[0]


def module_of(layer_name):
  """The sub-layer a leaf belongs to: between a leaf and a block.

  'encoder/0/attn/query/kernel' -> 'encoder/0/attn', 'decoder/1/norm3/scale' ->
  'decoder/1/norm3', 'token_embed/kernel' -> 'token_embed', 'out_mlp/fc1/bias' -> 'out_mlp'.
  """
  parts = layer_name.split("/")
  if parts[0] in ("encoder", "decoder") and len(parts) > 2 and parts[1].isdigit():
    return "/".join(parts[:3])
  return parts[0]


def group_keys(layer_names, by):
  """Group name of every leaf for `by` in GROUPINGS."""
  if by == "layer":
    return list(layer_names)
  if by == "module":
    return [module_of(n) for n in layer_names]
  if by == "block":
    return [block_of(n) for n in layer_names]
  if by == "body":
    return ["body"] * len(layer_names)
  raise ValueError(f"by={by!r}; valid: {', '.join(map(repr, GROUPINGS))}")



def body_layer_order(body_params):
  """(leaf names in network order, the permutation from flattening order to it).

  The conflict store keeps per-leaf Gramians in network order (embeddings, encoder, decoder,
  output MLP); the trainer applies the permutation to the Gramians its step returns.
  """
  names = shared_layer_names(body_params)
  order = network_order(names)
  return [names[i] for i in order], order
