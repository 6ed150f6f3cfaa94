"""model.init='torch': every parameter drawn as the official IPT PyTorch code draws it.

torch's defaults, which that code keeps: nn.Linear / nn.Conv2d weights and biases
U(+-1/sqrt(fan_in)) (kaiming_uniform_(a=sqrt(5))); nn.MultiheadAttention's stacked (3D, D)
in_proj_weight xavier_uniform_ U(+-sqrt(6/(4D))) (decoder), re-drawn U(+-1/sqrt(D)) in the
encoder layers; out_proj an nn.Linear; LayerNorm 1, 0; nn.Embedding N(0, 1).
"""
import math

import jax
import numpy as np
import pytest

from mtl import tasks
from mtl.models import ipt

# Paper-size tokens (n_feats 64: D = 576) with two layers each, so every weight matrix has
# >= 1728 entries: the sample std of n uniform draws has relative standard error sqrt(0.2/n)
# (<= 1.1%), of n normal draws sqrt(0.5/n), so a 5% tolerance is >= 4.6 standard errors.
CFG = ipt.ModelConfig(n_feats=64, patch_size=48, patch_dim=3, num_heads=12,
                      num_encoder_layers=2, num_decoder_layers=2)
D = CFG.token_dim
# One xdist worker for the module (--dist loadgroup): its paper-size init fixture is drawn once.
pytestmark = pytest.mark.xdist_group("init")


def _bound(path, shape):
  """torch's uniform bound for a weight/bias leaf, from the formulas in the module docstring."""
  if "attn" in path and path.endswith(("query/kernel", "key/kernel", "value/kernel")):
    return math.sqrt(6 / (D + 3 * D)) if path.startswith("body/decoder") else 1 / math.sqrt(D)
  fan_in = math.prod(shape[:-1])  # HWIO conv: H*W*I; (in, out) linear: in
  if path.endswith("bias"):  # a bias's layer's fan-in: the matching kernel's
    return None
  return 1 / math.sqrt(fan_in)


def _leaves(params):
  key = lambda k: str(getattr(k, "key", getattr(k, "idx", k)))
  return {"/".join(key(k) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def init_leaves():
  model = ipt.IPT(CFG, tasks.get_all(("denoise_30", "sr_x2")))
  # Per layer, as the official code holds them: the stacked layer axis would count as fan-in.
  return _leaves(ipt.map_bodies(ipt.unstack_layers, model.init(jax.random.key(0))))


@pytest.fixture(scope="module")
def leaves():
  return init_leaves()


def init_table(leaves):
  """(name, formula, measured std, expected std) for every weight, bias and embedding."""
  rows = []
  for name, x in sorted(leaves.items()):
    if "norm" in name:
      continue
    if name.endswith("pos_embed") or name.startswith("queries/"):
      rows.append((name, "N(0,1)", float(x.std()), 1.0))
      continue
    kernel = leaves.get(name[:-len("bias")] + "kernel") if name.endswith("bias") else x
    bound = _bound(name[:-len("bias")] + "kernel" if name.endswith("bias") else name, kernel.shape)
    rows.append((name, f"U(+-{bound:.4g})", float(x.std()), bound / math.sqrt(3)))
  return rows


def test_weights_and_embeddings_have_torch_stds(leaves):
  rows = init_table(leaves)
  assert len(rows) == len([n for n in leaves if "norm" not in n])
  for name, formula, measured, expected in rows:
    if leaves[name].size >= 1728:  # see CFG: 5% is >= 4.6 standard errors of the sample std
      assert measured == pytest.approx(expected, rel=0.05), (name, formula)


def test_every_draw_lies_in_its_uniform_bound_and_fills_it(leaves):
  for name, formula, _, expected in init_table(leaves):
    if formula.startswith("U"):
      x, bound = leaves[name], expected * math.sqrt(3)
      assert np.abs(x).max() <= bound, name
      if x.size >= 64:  # P(all n draws inside 0.9 * bound) = 0.9^n < 1.2e-3
        assert np.abs(x).max() > 0.9 * bound, name


def test_layer_norms_start_at_identity(leaves):
  norms = {n: x for n, x in leaves.items() if "norm" in n}
  assert len(norms) == 2 * (2 * 2 + 3 * 2)  # 2 encoder layers x 2 norms, 2 decoder x 3
  for name, x in norms.items():
    np.testing.assert_array_equal(x, 1.0 if name.endswith("scale") else 0.0)


def test_stacked_layers_start_identical_as_deep_copies(leaves):
  """_get_clones deep-copies one layer: layers share initial values (not parameters)."""
  for stack in ("encoder", "decoder"):
    first = {n.split("/", 3)[3]: x for n, x in leaves.items() if n.startswith(f"body/{stack}/0/")}
    second = {n.split("/", 3)[3]: x for n, x in leaves.items() if n.startswith(f"body/{stack}/1/")}
    assert first.keys() == second.keys() and first
    for name in first:
      np.testing.assert_array_equal(first[name], second[name])


def test_init_names_are_checked():
  cfg = dict(ipt.SIZES["tiny"], init="jax")
  with pytest.raises(ValueError, match="model.init='jax'; valid: 'torch', 'flax'"):
    ipt.ModelConfig(**cfg).validate()
  assert ipt.ModelConfig.from_config(dict(ipt.SIZES["tiny"])).init == "torch"  # older configs


if __name__ == "__main__":  # the table for the report
  for row in init_table(init_leaves()):
    print("%-50s %-14s %.5f %.5f %+.2f%%" % (row + (100 * (row[2] / row[3] - 1),)))
