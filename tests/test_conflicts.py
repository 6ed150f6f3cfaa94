"""Conflict quantities against explicit gradient vectors, grouping, EMA, the store, summaries."""
import io
import os
import zipfile

import jax
import numpy as np
import pytest

from mtl import conflicts, gramians, stats
from mtl.models import ipt

TASKS = ["denoise_30", "sr_x2", "derain"]
LAYERS = ["token_embed/bias", "token_embed/kernel", "pos_embed",
          "encoder/0/attn/query/kernel", "encoder/0/norm1/scale", "encoder/0/norm1/bias",
          "encoder/1/mlp/fc1/kernel", "decoder/0/cross_attn/key/kernel",
          "decoder/0/norm3/scale", "out_mlp/fc1/kernel", "out_mlp/fc2/bias"]
# A load sorts each layer's leaves into the order the network runs them (pre-norm: norm1 before
# attn; kernel before bias).
LOADED_ORDER = [1, 0, 2, 4, 5, 3, 6, 7, 8, 9, 10]
BLOCKS = ["embeddings", "embeddings", "embeddings", "encoder_0", "encoder_0", "encoder_0",
          "encoder_1", "decoder_0", "decoder_0", "output_mlp", "output_mlp"]


def explicit_cos(a, b):
  return np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))


def random_grads(rng, num_tasks=len(TASKS), sizes=None):
  """Per-leaf task gradients: list over leaves of (T, D_l) arrays, with a shared component."""
  sizes = sizes or [int(s) for s in rng.integers(3, 40, len(LAYERS))]
  grads = []
  for size in sizes:
    base = rng.normal(size=size)
    signs = rng.choice([-1.0, 1.0], num_tasks)
    grads.append(np.stack([s * base + rng.normal(size=size) for s in signs]))
  return grads


def gram(j):
  return j @ j.T


def synthetic_store(workdir, steps, seed=0):
  """Stores Gramians of LAYERS (the trainer's block order); returns them as a load reads them:
  leaves in network order (LOADED_ORDER)."""
  rng = np.random.default_rng(seed)
  grams = np.stack([np.stack([gram(g) for g in random_grads(rng)]) for _ in steps])
  conflicts.append(workdir, np.asarray(steps), grams.astype(np.float32), LAYERS, TASKS)
  return grams.astype(np.float32)[:, LOADED_ORDER]


def _npy(array):
  out = io.BytesIO()
  np.save(out, array)
  return out.getvalue()


# ----------------------------------------------------------------------------- derived


def test_derived_quantities_match_explicit_vectors():
  rng = np.random.default_rng(1)
  j = rng.normal(size=(4, 50))
  j[2] = -0.7 * j[0] + 0.1 * rng.normal(size=50)  # a clear conflict
  g = gram(j)
  cos, norms = conflicts.cosines(g), conflicts.norms(g)
  for a in range(4):
    assert norms[a] == pytest.approx(np.linalg.norm(j[a]), rel=1e-6)
    for b in range(4):
      assert cos[a, b] == pytest.approx(explicit_cos(j[a], j[b]), abs=1e-6)
  total = j.sum(0)
  np.testing.assert_allclose(conflicts.update_cosines(g),
                             [explicit_cos(j[a], total) for a in range(4)], atol=1e-6)
  negative = sum(explicit_cos(j[a], j[b]) < 0 for a in range(4) for b in range(a + 1, 4))
  assert conflicts.conflict_fraction(g) == pytest.approx(negative / 6)
  assert 0 < negative < 6
  # orthogonal (cos 0) is not a conflict; NaN (a zero gradient) is not counted
  assert conflicts.share_negative([0.0, -0.5, 0.5, np.nan]) == pytest.approx(1 / 3)


def test_derived_quantities_keep_leading_axes():
  rng = np.random.default_rng(2)
  j = rng.normal(size=(5, 7, 3, 20))  # (S, L, T, D)
  g = np.einsum("sltd,slud->sltu", j, j)
  cos = conflicts.cosines(g)
  assert cos.shape == (5, 7, 3, 3)
  assert cos[4, 6, 0, 2] == pytest.approx(explicit_cos(j[4, 6, 0], j[4, 6, 2]), abs=1e-6)
  assert conflicts.norms(g).shape == (5, 7, 3)
  assert conflicts.update_cosines(g).shape == (5, 7, 3)
  assert conflicts.conflict_fraction(g).shape == (5, 7)
  assert conflicts.pair_values(cos).shape == (5, 7, 3)
  assert conflicts.pair_values(cos)[1, 2, 1] == cos[1, 2, 0, 2]  # pairs (0,1), (0,2), (1,2)


def test_zero_gradient_gives_nan_not_a_conflict():
  j = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.1]])
  g = gram(j)
  cos = conflicts.cosines(g)
  assert np.isnan(cos[0, 1]) and np.isnan(cos[1, 1]) and cos[0, 0] == 1.0
  assert cos[0, 2] < 0
  assert conflicts.conflict_fraction(g) == 1.0  # the one defined pair conflicts
  assert np.isnan(conflicts.update_cosines(g)[1])
  assert np.isnan(conflicts.conflict_fraction(np.zeros((3, 3))))


# ----------------------------------------------------------------------------- grouping


def test_block_of_and_module_of():
  assert [ipt.block_of(n) for n in LAYERS] == BLOCKS
  assert ipt.block_of("decoder/11/self_attn/out/kernel") == "decoder_11"
  assert ipt.module_of("encoder/0/attn/query/kernel") == "encoder/0/attn"
  assert ipt.module_of("out_mlp/fc1/kernel") == "out_mlp"


def test_group_sums_equal_gramian_of_concatenation():
  rng = np.random.default_rng(3)
  grads = random_grads(rng)
  per_leaf = np.stack([gram(g) for g in grads])
  names, g_block = conflicts.group(per_leaf, LAYERS, by="block")
  assert names == ["embeddings", "encoder_0", "encoder_1", "decoder_0", "output_mlp"]
  for b, name in enumerate(names):
    concat = np.concatenate([g for g, blk in zip(grads, BLOCKS) if blk == name], axis=1)
    np.testing.assert_allclose(g_block[b], gram(concat), rtol=1e-10)
  names, g_body = conflicts.group(per_leaf, LAYERS, by="body")
  assert names == ["body"] and g_body.shape == (1, 3, 3)
  np.testing.assert_allclose(g_body[0], gram(np.concatenate(grads, axis=1)), rtol=1e-10)
  names, g_layer = conflicts.group(per_leaf, LAYERS, by="layer")
  assert names == LAYERS and g_layer is per_leaf
  # with a leading step axis
  names, g_steps = conflicts.group(np.stack([per_leaf, 2 * per_leaf]), LAYERS, by="block")
  np.testing.assert_allclose(g_steps[1], 2 * g_block)
  with pytest.raises(ValueError, match="valid"):
    conflicts.group(per_leaf, LAYERS, by="blocks")
  with pytest.raises(ValueError, match="layer names"):
    conflicts.group(per_leaf, LAYERS[:-1])


def test_leaf_gramians_in_pieces_match_float64_products_per_layer():
  # A stacked body (T, layers, ...) of float32 gradients: one leaf cut into 24 pieces, one that
  # fits a piece, one whose size (13 x 101) has no divisor near size / chunk (one product).
  rng = np.random.default_rng(4)
  T, L = 4, 3
  body = {"encoder": {"w": rng.normal(size=(T, L, 24, 1000))},
          "decoder": {"b": rng.normal(size=(T, L, 7))}, "pos_embed": rng.normal(size=(T, 13, 101))}
  body = jax.tree_util.tree_map(lambda g: g.astype(np.float32), body)
  assert [gramians.split_k(n, 1000) for n in (24000, 7, 1313)] == [(24, 1000), (1, 7), (1, 1313)]
  want = np.stack([gram(g.reshape(T, -1).astype(np.float64)) for g in
                   [body["decoder"]["b"][:, l] for l in range(L)]
                   + [body["encoder"]["w"][:, l] for l in range(L)] + [body["pos_embed"]]])
  sizes = np.array([7] * L + [24000] * L + [1313])[:, None, None]
  norms = np.sqrt(np.einsum("ltt->lt", want))
  # Any order of a float32 sum of n products is within n u sum|a_i b_i| <= n u |a||b| of the
  # exact one (u = 2^-24; a float64 sum of these float32 products is exact to ~1e-16): the bound
  # for both forms on every backend at 'highest'. Mixing up layers, tasks or pieces moves O(1).
  bound = 1.01 * sizes * 2.0**-24 * norms[:, :, None] * norms[:, None, :]
  for chunk in (0, 1000):
    got = np.asarray(gramians.leaf_gramians(body, chunk), np.float64)
    assert got.shape == (2 * L + 1, T, T)
    assert np.all(np.abs(got - want) <= bound), chunk


def test_ema_matches_gradvac_recursion():
  x = np.array([0.5, -0.2, np.nan, 0.3])
  beta = 0.25
  phi, expected = 0.0, []
  for v in x:
    phi = phi if np.isnan(v) else (1 - beta) * phi + beta * v
    expected.append(phi)
  np.testing.assert_allclose(conflicts.ema(x, beta), expected)
  assert conflicts.ema(x, beta, init=None)[0] == 0.5
  two = conflicts.ema(np.stack([x, -x], axis=1), beta)
  np.testing.assert_allclose(two[:, 1], -np.array(expected))
  with pytest.raises(ValueError, match="beta"):
    conflicts.ema(x, 0.0)


# ----------------------------------------------------------------------------- store


def chunk_names(workdir):
  return sorted(n for n in os.listdir(conflicts.store_dir(workdir)) if n.startswith("chunk-"))


def test_store_round_trip(tmp_path):
  wd = str(tmp_path)
  a = synthetic_store(wd, [0, 5, 10], seed=0)
  b = synthetic_store(wd, [15, 20], seed=1)
  assert chunk_names(wd) == ["chunk-000000000-000000010.npz", "chunk-000000015-000000020.npz"]
  record = conflicts.load(wd)
  assert record.steps.dtype == np.int64 and record.steps.tolist() == [0, 5, 10, 15, 20]
  assert record.gramians.dtype == np.float32
  assert record.layer_names == (
      "token_embed/kernel", "token_embed/bias", "pos_embed", "encoder/0/norm1/scale",
      "encoder/0/norm1/bias", "encoder/0/attn/query/kernel", "encoder/1/mlp/fc1/kernel",
      "decoder/0/cross_attn/key/kernel", "decoder/0/norm3/scale", "out_mlp/fc1/kernel",
      "out_mlp/fc2/bias")
  assert list(record.layer_names) == [LAYERS[i] for i in LOADED_ORDER]
  np.testing.assert_array_equal(record.gramians, np.concatenate([a, b]))
  assert record.task_names == tuple(TASKS)
  assert record.cosines(by="body").shape == (5, 1, 3, 3)
  assert record.cosines(by="block").shape == (5, 5, 3, 3)
  assert record.pair_names == ["denoise_30~sr_x2", "denoise_30~derain", "sr_x2~derain"]
  part = conflicts.load(wd, (5, 16))
  assert part.steps.tolist() == [5, 10, 15]
  np.testing.assert_array_equal(part.gramians, record.gramians[1:4])
  assert conflicts.load(wd, (None, 6)).steps.tolist() == [0, 5]
  assert record.last(2).steps.tolist() == [15, 20]


def test_truncate_then_append_has_no_duplicates_or_gaps(tmp_path):
  wd = str(tmp_path)
  synthetic_store(wd, list(range(0, 10)), seed=0)
  synthetic_store(wd, list(range(10, 20)), seed=1)
  conflicts.truncate_after(wd, 14)  # a resume from the checkpoint at step 15
  assert chunk_names(wd) == ["chunk-000000000-000000009.npz", "chunk-000000010-000000014.npz"]
  assert conflicts.load(wd).steps.tolist() == list(range(15))
  synthetic_store(wd, list(range(15, 25)), seed=2)
  assert conflicts.load(wd).steps.tolist() == list(range(25))
  conflicts.truncate_after(wd, -1)
  assert chunk_names(wd) == []
  conflicts.truncate_after(str(tmp_path / "fresh"), 0)  # no store yet: nothing to do


def test_append_over_stored_steps_replaces_them(tmp_path):
  wd = str(tmp_path)
  synthetic_store(wd, [0, 1, 2, 3, 4], seed=0)
  new = synthetic_store(wd, [3, 4, 5], seed=9)  # a resumed run re-measures steps 3 and 4
  record = conflicts.load(wd)
  assert record.steps.tolist() == [0, 1, 2, 3, 4, 5]
  np.testing.assert_array_equal(record.gramians[3:], new)


def test_load_drops_duplicate_steps_defensively(tmp_path):
  wd = str(tmp_path)
  grams = synthetic_store(wd, [0, 1, 2, 3], seed=0)
  # What a crash between writing the shorter chunk and removing the old one leaves behind.
  np.savez(os.path.join(conflicts.store_dir(wd), "chunk-000000000-000000001.npz"),
           steps=np.array([0, 1], np.int64), gramians=grams[:2][:, np.argsort(LOADED_ORDER)])
  record = conflicts.load(wd)
  assert record.steps.tolist() == [0, 1, 2, 3]
  np.testing.assert_array_equal(record.gramians, grams)


def test_append_refuses_mismatching_names_and_shapes(tmp_path):
  wd = str(tmp_path)
  synthetic_store(wd, [0])
  g = np.zeros((1, len(LAYERS), 3, 3), np.float32)
  with pytest.raises(ValueError, match="task_names .*index 2.*'rain'.*'derain'"):
    conflicts.append(wd, [1], g, LAYERS, TASKS[:2] + ["rain"])
  with pytest.raises(ValueError, match="layer_names"):
    conflicts.append(wd, [1], g[:, 1:], LAYERS[1:], TASKS)
  with pytest.raises(ValueError, match="expected"):
    conflicts.append(wd, [1, 2], g, LAYERS, TASKS)
  with pytest.raises(ValueError, match="strictly increasing"):
    conflicts.append(wd, [3, 2], np.concatenate([g, g]), LAYERS, TASKS)
  assert conflicts.load(wd).steps.tolist() == [0]


def test_clear_errors(tmp_path):
  wd = str(tmp_path)
  with pytest.raises(ValueError, match=f"no conflict store in {wd}"):
    conflicts.load(wd)
  synthetic_store(wd, [0, 10, 20])
  with pytest.raises(ValueError, match="outside the stored steps 0..20"):
    conflicts.load(wd, (30, 40))
  with pytest.raises(ValueError, match="selects no probe step"):
    conflicts.load(wd, (11, 19))
  with pytest.raises(ValueError, match="START must be < END"):
    conflicts.load(wd, (10, 10))
  with pytest.raises(ValueError, match="not START:END"):
    conflicts.parse_step_range("10-20")
  assert conflicts.parse_step_range("10:") == (10, None)
  assert conflicts.parse_step_range("") is None
  store = conflicts.Store(wd)
  store.check(TASKS, LAYERS, halves=False)  # the per-task store it holds: fine
  with pytest.raises(ValueError, match="task_names .* differ from the ones stored"):
    store.check(TASKS[::-1], LAYERS)
  chunk = os.path.join(conflicts.store_dir(wd), chunk_names(wd)[0])
  with open(chunk, "rb") as f:
    data = f.read()
  with open(chunk, "wb") as f:
    f.write(data[: len(data) // 2])  # truncated by a crash outside our atomic write
  with pytest.raises(ValueError, match=f"corrupt conflict chunk {chunk}") as info:
    conflicts.load(wd)
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match=f"corrupt conflict chunk {chunk}"):
    store.check(TASKS, LAYERS, halves=False)  # before the run trains, not when it first appends
  # Foreign arrays under a chunk's name: one array, steps past int64, complex Gramians.
  grams = np.zeros((1, len(LAYERS), 3, 3), np.float32)

  def huge(f):  # a header claiming petabytes over 16 bytes of data
    with zipfile.ZipFile(f, "w") as archive:
      archive.writestr("steps.npy", _npy(np.array([0])))
      header = io.BytesIO()
      np.lib.format.write_array_header_1_0(header, {
          "descr": "<f4", "fortran_order": False, "shape": (10**12, len(LAYERS), 3, 3)})
      archive.writestr("gramians.npy", header.getvalue() + bytes(16))

  def flagged(f, flag, offset):  # an encrypted member, or one of compression method 99 (AES)
    plain = io.BytesIO()
    np.savez(plain, steps=np.array([0]), gramians=grams)
    data = bytearray(plain.getvalue())
    for start in (0, data.find(b"PK\x01\x02")):  # the first member's local and central headers
      field = start + (6 if start == 0 else 8) + offset
      data[field:field + 1] = flag
    f.write(bytes(data))

  for problem, write in (
      ("MemoryError", huge),  # these three were tracebacks
      ("RuntimeError: File 'steps.npy' is encrypted", lambda f: flagged(f, b"\x01", 0)),
      ("NotImplementedError", lambda f: flagged(f, b"\x63", 2)),
      ("TypeError", lambda f: np.save(f, np.arange(3))),
      ("outside \\[0, 2\\*\\*63\\)", lambda f: np.savez(
          f, steps=np.array([2**64 - 1], np.uint64), gramians=grams)),
      ("not real floating point", lambda f: np.savez(
          f, steps=np.array([0]), gramians=grams.astype(np.complex64)))):
    with open(chunk, "wb") as f:
      write(f)
    with pytest.raises(ValueError, match=f"corrupt conflict chunk {chunk}: .*{problem}"):
      store.read_chunk(chunk)
  meta = os.path.join(conflicts.store_dir(wd), "meta.json")
  for damaged in ("{not json", "[" * 100_000 + "]" * 100_000):  # deep nesting: RecursionError
    with open(meta, "w") as f:
      f.write(damaged)
    with pytest.raises(ValueError, match="corrupt conflict store meta"):
      conflicts.load(wd)


def test_truncate_removes_crashed_temporary_files(tmp_path):
  wd = str(tmp_path)
  synthetic_store(wd, [0, 1])
  leftover = os.path.join(conflicts.store_dir(wd), "chunk-000000002-000000003.npz.tmp-123")
  open(leftover, "wb").close()
  assert conflicts.load(wd).steps.tolist() == [0, 1]  # ignored by load
  conflicts.truncate_after(wd, 5)
  assert not os.path.exists(leftover)


# ----------------------------------------------------------------------------- summaries


def test_summarize_numbers(tmp_path):
  rng = np.random.default_rng(5)
  steps, grams, body_cos = [], [], []
  for s in range(8):
    grads = random_grads(rng)
    concat = np.concatenate(grads, axis=1)
    body_cos.append([explicit_cos(concat[a], concat[b]) for a, b in [(0, 1), (0, 2), (1, 2)]])
    steps.append(10 * s)
    grams.append(np.stack([gram(g) for g in grads]))
  conflicts.append(str(tmp_path), steps, np.stack(grams).astype(np.float32), LAYERS, TASKS)
  record = conflicts.load(str(tmp_path))
  body_cos = np.array(body_cos)
  out = conflicts.summarize(record)
  assert out["steps"] == {"first": 0, "last": 70, "count": 8, "label": "steps 0-70 (8 probes)"}
  for k, pair in enumerate(record.pair_names):
    assert out["pair"][pair]["mean_cos"] == pytest.approx(body_cos[:, k].mean(), abs=1e-5)
    assert out["pair"][pair]["conflict_fraction"] == pytest.approx((body_cos[:, k] < 0).mean())
  assert out["mean_cos"][2][1] == pytest.approx(body_cos[:, 2].mean(), abs=1e-5)
  assert out["conflict_fraction"] == pytest.approx((body_cos < 0).mean())
  norms = [np.mean([np.sqrt(g[:, t, t].sum()) for g in grams]) for t in range(3)]
  assert [out["mean_norm"][t] for t in TASKS] == pytest.approx(norms, rel=1e-5)
  last3 = conflicts.summarize(record, window=3)
  assert last3["steps"]["count"] == 3
  assert last3["pair"]["sr_x2~derain"]["mean_cos"] == pytest.approx(body_cos[-3:, 2].mean(),
                                                                    abs=1e-5)
  text = conflicts.format_summary(out)
  assert "sr_x2~derain" in text and "steps 0-70 (8 probes)" in text


def known_halves(steps, cos, noise=8.0, dim=4000, seed=0, norms=(1.0, 1.0, 1.0)):
  """(steps, 1, 6, 6) half-split Gramians of tasks a, b, c whose expected gradients have norms
  `norms` and pairwise cosines `cos` (a~b, a~c, b~c); each half-batch gradient is its task's
  expectation plus isotropic noise of norm ~`noise`."""
  rng = np.random.default_rng(seed)
  c = np.eye(3)
  for (i, j), v in zip(conflicts.pair_indices(3), cos):
    c[i, j] = c[j, i] = v
  basis = np.linalg.qr(rng.normal(size=(dim, 3)))[0].T           # 3 orthonormal directions
  mu = np.asarray(norms)[:, None] * (np.linalg.cholesky(c) @ basis)  # cosines: c
  halves = mu[None, :, None] + noise / np.sqrt(dim) * rng.normal(size=(steps, 3, 2, dim))
  halves = halves.reshape(steps, 1, 6, dim)
  return np.einsum("sltd,slud->sltu", halves, halves).astype(np.float32)


def phased_store(workdir):
  """90 probe steps written by the store's writer: a~c agrees (+0.5) for the first 30 only,
  then is orthogonal; a~b conflicts (-0.3) and b~c agrees (+0.1) throughout."""
  grams = np.concatenate([known_halves(30, (-0.3, 0.5, 0.1), noise=4.0),
                          known_halves(60, (-0.3, 0.0, 0.1), noise=4.0, seed=1)])
  conflicts.append(workdir, np.arange(0, 900, 10), grams, ["pos_embed"], ["a", "b", "c"])


def test_verdict_per_phase_and_a_warning_per_pair_that_changes(tmp_path):
  phased_store(str(tmp_path))
  record = conflicts.load(str(tmp_path))
  phased = conflicts.phase_verdicts(record)
  assert [(p["label"], p["first"], p["last"], p["count"]) for p in phased["phases"]] == [
      ("early", 0, 290, 30), ("middle", 300, 590, 30), ("late", 600, 890, 30)]
  assert phased["headline"] == "late" and conflicts.headline_window(record) == 30
  verdicts = {p: [ph["pair"][p]["verdict"] for ph in phased["phases"]]
              for p in ("a~b", "a~c", "b~c")}
  assert verdicts["a~b"] == [conflicts.CONFLICT] * 3
  assert verdicts["b~c"] == [conflicts.AGREEMENT] * 3
  assert verdicts["a~c"][0] == conflicts.AGREEMENT  # the early agreement ...
  assert verdicts["a~c"][2] == conflicts.UNDETECTED  # ... gone once it is orthogonal
  assert phased["disagree"] == {"a~c": verdicts["a~c"]}
  late = record.last(30).corrected_cosine_intervals()[1]
  assert phased["phases"][2]["pair"]["a~c"]["corrected_cos"]["estimate"] == late.estimate
  text = conflicts.format_phases(phased)
  assert [l for l in text.splitlines() if l.startswith("WARNING")] == [
      "WARNING: a~c changes verdict between phases: early 'agreement beyond noise', middle "
      f"'{verdicts['a~c'][1]}', late 'no conflict detectable above the noise floor'; the "
      "headline reads the late phase"]
  assert "headline: the late phase" in text and text.count("<- headline") == 3
  # Few probes: fewer phases (each >= MIN_PHASE_PROBES), down to the whole run.
  assert [len(conflicts.split_phases(record.last(n))) for n in (8, 18, 26, 27)] == [1, 2, 2, 3]
  assert conflicts.headline_window(record.last(8)) == 0
  # A removed chunk leaves a stretch without probes, named by analyze.py.
  assert conflicts.step_gaps(record.steps) == []
  assert conflicts.step_gaps(np.r_[0:200:10, 400:600:10]) == [(200, 390)]
  # The title says why there is one phase; a numbered phase reads as one in a sentence.
  assert "(one phase (too few probes to split))" in conflicts.format_phases(
      conflicts.phase_verdicts(record.last(8)))
  assert "(one phase)," in conflicts.format_phases(conflicts.phase_verdicts(record, 1))
  assert "headline: the phase 5/5 (the last part" in conflicts.format_phases(
      conflicts.phase_verdicts(record, 5))


def test_a_verdict_beyond_noise_says_where_it_does_not_hold_over_the_pairs(tmp_path):
  # True cosines -0.1, +0.1, 0 and this seed's noise: a~b and a~c each exclude 0 alone (p = 0.004,
  # 0.039), but a~c's Holm-adjusted p over the 3 pairs (2 x 0.039, the second smallest) is not
  # below 5%; the verdicts themselves stay each on its own interval
  conflicts.append(str(tmp_path), np.arange(0, 300, 10),
                   known_halves(30, (-0.1, 0.1, 0.0), noise=4.0, seed=2), ["pos_embed"],
                   ["a", "b", "c"])
  record = conflicts.load(str(tmp_path))
  pairs = conflicts.phase_verdicts(record, 1)["phases"][0]["pair"]
  p = [e["corrected_cos"]["p"] for e in pairs.values()]
  assert p[0] < 0.01 < p[1] < 0.05 < p[2]
  assert [e["p_holm"] for e in pairs.values()] == pytest.approx(
      [3 * p[0], 2 * p[1], p[2]], rel=1e-12)
  assert [e["verdict"] for e in pairs.values()] == [
      conflicts.CONFLICT, conflicts.AGREEMENT, conflicts.UNDETECTED]
  held = f"agreement beyond noise; not held over the 3 pairs (Holm p {2 * p[1]:.3f})"
  assert [conflicts.verdict_text(e, pairs) for e in pairs.values()] == [
      conflicts.CONFLICT, held, conflicts.UNDETECTED]
  # the run's answer, analyze.py's phases and its noise floor all say so
  headline = conflicts.format_headline(conflicts.phase_verdicts(record, 1)).splitlines()
  assert headline[1].endswith(f"  {conflicts.CONFLICT}") and headline[2].endswith(f"  {held}")
  assert f"  {held}" in conflicts.format_phases(conflicts.phase_verdicts(record, 1))
  floor = conflicts.noise_floor(record)
  assert f"    verdict: {held}" in conflicts.format_noise_floor(floor, {"label": "all"})
  # a pair alone: its own interval decides
  alone = {"a~c": dict(pairs["a~c"], p_holm=p[1])}
  assert conflicts.verdict_text(alone["a~c"], alone) == conflicts.AGREEMENT


# ----------------------------------------------------------------------------- format versions


def write_v1_store(workdir, steps, seed=0):
  """A store as format version 1 wrote it: meta without 'halves', per-task (S, L, T, T)."""
  import json
  rng = np.random.default_rng(seed)
  grams = np.stack([np.stack([gram(g) for g in random_grads(rng)]) for _ in steps])
  path = conflicts.store_dir(workdir)
  os.makedirs(path)
  with open(os.path.join(path, "meta.json"), "w") as f:
    json.dump({"format": "mtl.conflicts", "version": 1, "task_names": TASKS,
               "layer_names": LAYERS}, f)
  np.savez(os.path.join(path, f"chunk-{steps[0]:09d}-{steps[-1]:09d}.npz"),
           steps=np.asarray(steps, np.int64), gramians=grams.astype(np.float32))
  return grams.astype(np.float32)[:, LOADED_ORDER]


def test_version_1_store_loads_without_a_noise_floor(tmp_path):
  wd = str(tmp_path)
  grams = write_v1_store(wd, list(range(0, 40, 5)))
  record = conflicts.load(wd)
  assert not record.halves and record.half_gramians is None
  np.testing.assert_array_equal(record.gramians, grams)
  assert np.isnan(record.same_task_agreement("body")).all()
  assert record.same_task_agreement("block").shape == (8, 5, 3)
  assert np.isnan(record.corrected_cosines("body")).all()
  intervals = record.corrected_cosine_intervals()
  assert len(intervals) == 3 and all(np.isnan(iv.estimate) for iv in intervals)
  assert intervals[0].note == conflicts.NO_HALVES
  out = conflicts.summarize(record)
  assert out["noise_floor"]["halves"] is False
  assert {e["verdict"] for e in out["pair"].values()} == {conflicts.NOT_MEASURABLE}
  # the raw numbers and their intervals are still there
  pcos = conflicts.pair_values(conflicts.cosines(grams.sum(1)))
  assert out["pair"]["sr_x2~derain"]["cos_interval"]["estimate"] == pytest.approx(
      pcos[:, 2].mean(), abs=1e-5)
  text = conflicts.format_summary(out)
  assert "no noise floor" in text and "written before format version 2" in text
  with pytest.raises(ValueError,
                     match=r"per-task Gramians \(format version 1\), these are half-split"):
    synthetic_half_store(wd, [100])  # a v1 run cannot be continued with halves


def synthetic_half_store(workdir, steps, seed=0):
  rng = np.random.default_rng(seed)
  grams = np.stack([np.stack([gram(g) for g in random_grads(rng, num_tasks=2 * len(TASKS))])
                    for _ in steps]).astype(np.float32)
  conflicts.append(workdir, np.asarray(steps), grams, LAYERS, TASKS)
  return grams[:, LOADED_ORDER]


def test_version_2_store_round_trip_and_clear_errors(tmp_path):
  import json
  wd = str(tmp_path)
  g2 = synthetic_half_store(wd, [0, 1, 2])
  with open(os.path.join(conflicts.store_dir(wd), "meta.json")) as f:
    meta = json.load(f)
  assert meta["version"] == 2 and meta["halves"] is True and meta["task_names"] == TASKS
  record = conflicts.load(wd)
  np.testing.assert_array_equal(record.half_gramians, g2)
  np.testing.assert_allclose(record.gramians, conflicts.task_gramian(g2), rtol=1e-6)
  assert record.last(2).half_gramians.shape == (2, len(LAYERS), 6, 6)
  with pytest.raises(ValueError, match="per-task.*use a fresh workdir"):
    conflicts.append(wd, [5], np.zeros((1, len(LAYERS), 3, 3), np.float32), LAYERS, TASKS)
  with pytest.raises(ValueError, match=r"expected \(1, 11, 3, 3\) or, half-split, \(1, 11, 6, 6\)"):
    conflicts.append(wd, [5], np.zeros((1, len(LAYERS), 4, 4), np.float32), LAYERS, TASKS)
  meta["version"] = 3
  with open(os.path.join(conflicts.store_dir(wd), "meta.json"), "w") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match="format version 3; this code reads versions 1, 2"):
    conflicts.load(wd)


def test_the_probe_batch_is_recorded_named_and_picks_the_interval_method(tmp_path):
  import json
  fresh, training, old = (str(tmp_path / n) for n in ("fresh", "training", "old"))
  rng = np.random.default_rng(0)
  means = [np.repeat(rng.normal(size=(len(TASKS), 20)), 2, axis=0) for _ in LAYERS]  # per half
  grams = np.stack([np.stack([gram(m + 0.5 * rng.normal(size=m.shape)) for m in means])
                    for _ in range(12)]).astype(np.float32)
  conflicts.append(fresh, np.arange(12), grams, LAYERS, TASKS, {"size": 32, "fresh": True})
  conflicts.append(training, np.arange(12), grams, LAYERS, TASKS, {"size": 4, "fresh": False})
  conflicts.append(old, np.arange(12), grams, LAYERS, TASKS)
  at_checkpoint = str(tmp_path / "checkpoint")  # analyze --checkpoint's: batches at one step
  conflicts.append(at_checkpoint, np.arange(10**7, 10**7 + 12), grams, LAYERS, TASKS, {
      "size": 8, "fresh": True, "checkpoint": {"run": "joint-s0", "step": 400}})
  measured = conflicts.load(at_checkpoint)
  assert measured.checkpoint == {"run": "joint-s0", "step": 400} and measured.name == "joint-s0"
  assert measured.window_label() == "checkpoint step 400, 12 fresh batches of 8/task"
  xs, label = measured.x_axis()
  assert xs.tolist() == list(range(1, 13)) and label == "fresh probe batch (one checkpoint)"
  assert conflicts.load(fresh).checkpoint is None and conflicts.load(old).checkpoint is None
  record = conflicts.load(fresh)
  assert record.probe_batch == {"size": 32, "fresh": True}
  assert record.window_label() == "steps 0-11 (12 probes, fresh batches of 32/task)"
  assert conflicts.load(training).window_label().endswith("training batches of 4/task)")
  assert conflicts.load(old).window_label() == "steps 0-11 (12 probes)"
  # Fresh probe batches are independent given the parameters: one term per probe (n - 1 df);
  # the rest keep batch means. The same pieces, so the same estimate.
  iv_fresh = record.corrected_cosine_intervals()[0]
  iv_old = conflicts.load(old).corrected_cosine_intervals()[0]
  assert iv_fresh.method == "independent + delta" and iv_old.method == "batch_means + delta"
  assert iv_fresh.estimate == iv_old.estimate
  # ... the conflict fraction too (it took batch means over fresh probes, as if correlated)
  share_fresh, share_old = (r.conflict_fraction_intervals()[0]
                            for r in (record, conflicts.load(old)))
  assert (share_fresh.method, share_fresh.n) == ("wilson, independent draws", 12)
  assert share_old.method == "wilson, effective n (t quantile)"
  entry = next(iter(conflicts.summarize(record)["pair"].values()))["conflict_fraction_interval"]
  assert (entry["n_eff"], entry["df"]) == (12, None)
  assert "fresh batches of 32/task" in conflicts.format_headline(conflicts.phase_verdicts(record))
  summary = conflicts.format_summary(conflicts.summarize(record))
  assert "whole body, steps 0-11 (12 probes, fresh batches of 32/task)" in summary
  assert "independent probes (fresh probe batches" in summary
  path = os.path.join(conflicts.store_dir(fresh), "meta.json")
  with open(path) as f:
    meta = json.load(f)
  for bad in ({"size": "32", "fresh": True},
              {"size": 32, "fresh": True, "checkpoint": {"run": "x", "step": "400"}}):
    meta["probe_batch"] = bad
    with open(path, "w") as f:
      json.dump(meta, f)
    with pytest.raises(ValueError, match="corrupt conflict store meta .*probe_batch"):
      conflicts.load(fresh)


def test_non_finite_probes_are_skipped_with_a_warning(tmp_path, caplog):
  workdir = str(tmp_path)
  grams = synthetic_store(workdir, [0, 1, 2, 3])
  broken = grams[:2].copy()
  broken[0, 1, 0, 0] = np.nan   # step 4: one leaf overflowed
  broken[1, 0, 2, 1] = np.inf   # step 5
  conflicts.append(workdir, np.asarray([4, 5]), broken, LAYERS, TASKS)
  with caplog.at_level("WARNING"):
    record = conflicts.load(workdir)
  assert record.steps.tolist() == [0, 1, 2, 3] and record.num_steps == 4
  assert np.isfinite(record.cosines()).all()
  assert "skipping 2 of 6 probe steps whose Gramians are not finite (NaN/inf), at steps 4, 5" in (
      caplog.text)
  nan_only = str(tmp_path / "nan")
  conflicts.append(nan_only, np.asarray([0]), np.full_like(grams[:1], np.nan), LAYERS, TASKS)
  with pytest.raises(ValueError, match="every probe step's Gramians are non-finite"):
    conflicts.load(nan_only)


# ----------------------------------------------------------------------------- resumes and metas


def half_grams(steps, seed=0):
  """Half-split (S, L, 2T, 2T) Gramians of LAYERS, as the trainer's probes store them."""
  rng = np.random.default_rng(seed)
  return np.stack([np.stack([gram(g) for g in random_grads(rng, num_tasks=2 * len(TASKS))])
                   for _ in range(steps)]).astype(np.float32)


def test_check_refuses_a_store_the_trainer_cannot_append_to(tmp_path):
  # The trainer checks before training and appends half-split Gramians at its first checkpoint,
  # before saving it: a store that append refuses must be refused here, or every resume fails.
  v1, per_task, halves = (str(tmp_path / n) for n in ("v1", "per_task", "halves"))
  write_v1_store(v1, [0, 5])
  with pytest.raises(ValueError) as error:
    conflicts.Store(v1).check(TASKS, LAYERS)
  assert str(error.value) == (
      f"{conflicts.store_dir(v1)}/meta.json holds per-task Gramians (format version 1), these "
      f"are half-split (version 2); move {conflicts.store_dir(v1)} away or use a fresh workdir")
  synthetic_store(per_task, [0, 5])  # version 2 without halves
  with pytest.raises(ValueError, match=r"meta.json holds per-task Gramians \(format version 2\), "
                                       r"these are half-split \(version 2\); move "):
    conflicts.Store(per_task).check(TASKS, LAYERS)
  conflicts.Store(per_task).check(TASKS, LAYERS, halves=False)  # per-task appends: fine
  conflicts.append(halves, [0, 5], half_grams(2), LAYERS, TASKS)
  conflicts.Store(halves).check(TASKS, LAYERS)  # what the trainer wrote: fine
  with pytest.raises(ValueError, match=r"holds half-split Gramians \(format version 2\), these "
                                       r"are per-task"):
    conflicts.Store(halves).check(TASKS, LAYERS, halves=False)


def test_a_meta_without_task_pairs_or_of_a_non_integer_version_is_refused_in_one_line(tmp_path):
  import json
  wd = str(tmp_path / "run")
  conflicts.append(wd, [0, 1], half_grams(2), LAYERS, TASKS)
  path = os.path.join(conflicts.store_dir(wd), "meta.json")
  with open(path) as f:
    meta = json.load(f)
  for key, value, problem in (
      ("task_names", ["a"], "task_names ['a'] has fewer than two tasks"),
      ("task_names", [], "task_names [] has fewer than two tasks"),
      ("task_names", ["a", "b", "a"], "task_names repeats 'a'"),
      ("layer_names", [], "layer_names is empty"),
      ("layer_names", LAYERS[:-1] + [LAYERS[0]], "layer_names repeats 'token_embed/bias'")):
    with open(path, "w") as f:
      json.dump(dict(meta, **{key: value}), f)
    with pytest.raises(ValueError) as error:
      conflicts.load(wd)
    assert str(error.value) == f"corrupt conflict store meta {path}: {problem}"
  with open(path, "w") as f:
    json.dump(dict(meta, version=True), f)  # true == 1 in Python: no version 1 store
  with pytest.raises(ValueError) as error:
    conflicts.load(wd)
  assert str(error.value) == f"{path} has format version True; this code reads versions 1, 2"
  # The writer refuses such names too, before writing anything.
  one = str(tmp_path / "one")
  with pytest.raises(ValueError, match=r"^cannot store conflicts: task_names \['a'\] has fewer "
                                       r"than two tasks$"):
    conflicts.append(one, [0], np.zeros((1, 1, 2, 2), np.float32), ["pos_embed"], ["a"])
  assert not os.path.exists(one)


def test_a_fresh_restart_records_its_own_probe_batch(tmp_path):
  # Attempt 1 probes the training batch and stops before its first checkpoint; attempt 2 starts
  # afresh with fresh probe batches: the trainer's check and truncation, then its append.
  wd = str(tmp_path)
  meta = os.path.join(conflicts.store_dir(wd), "meta.json")
  conflicts.append(wd, [0, 10], half_grams(2), LAYERS, TASKS, {"size": 8, "fresh": False})
  conflicts.Store(wd).check(TASKS, LAYERS)
  conflicts.truncate_after(wd, -1)
  assert chunk_names(wd) == [] and not os.path.exists(meta)
  conflicts.append(wd, [0, 10, 20], half_grams(3), LAYERS, TASKS, {"size": 32, "fresh": True})
  record = conflicts.load(wd)
  assert record.probe_batch == {"size": 32, "fresh": True}
  assert record.interval_method == "independent"
  # An append over every stored step (a resume from step 0) also records its own.
  conflicts.append(wd, [0, 5], half_grams(2), LAYERS, TASKS, {"size": 4, "fresh": False})
  assert conflicts.load(wd).probe_batch == {"size": 4, "fresh": False}
  # Steps kept: the meta stays with them.
  conflicts.append(wd, [10], half_grams(1), LAYERS, TASKS, {"size": 16, "fresh": True})
  conflicts.truncate_after(wd, 7)
  assert conflicts.load(wd).steps.tolist() == [0, 5]
  assert conflicts.load(wd).probe_batch == {"size": 4, "fresh": False}


def test_a_store_without_halves_keeps_its_probe_batch(tmp_path):
  wd = str(tmp_path)
  rng = np.random.default_rng(0)
  grams = np.stack([np.stack([gram(g) for g in random_grads(rng)]) for _ in range(6)])
  conflicts.append(wd, np.arange(6), grams.astype(np.float32), LAYERS, TASKS,
                   {"size": 16, "fresh": True})
  record = conflicts.load(wd)
  assert not record.halves and record.probe_batch == {"size": 16, "fresh": True}
  assert record.interval_method == "independent"
  assert record.window_label() == "steps 0-5 (6 probes, fresh batches of 16/task)"


def test_the_trainer_logs_the_intervals_analyze_reads(tmp_path):
  # Probes on fresh batches: TensorBoard's corrected-cosine intervals are the independent ones
  # that analyze computes from the store, not batch means.
  from mtl import draw, train

  class Scalars:
    def __init__(self):
      self.logged = {}

    def scalars(self, step, values):
      self.logged.setdefault(step, {}).update(values)

  wd, writer = str(tmp_path), Scalars()
  grams = known_halves(30, (-0.3, 0.5, 0.1), noise=4.0)
  train._flush_probes(wd, list(zip(range(30), grams)), ["pos_embed"], ["a", "b", "c"], True,
                      writer, {"size": 8, "fresh": True})
  record = conflicts.load(wd)
  want = dict(draw.probe_scalars(record))[29]
  assert "conflicts/corrected_cos_low/a~b" in want
  assert writer.logged[29] == pytest.approx(want)
  batch_means = record.corrected_cosine_intervals(method="batch_means")[0]
  assert writer.logged[29]["conflicts/corrected_cos_low/a~b"] != pytest.approx(batch_means.low)


def test_the_summary_says_which_modules_conflict_beyond_noise_over_all_of_them():
  # pos_embed: a~b conflict, a~c and b~c agree, every noise floor resolved; token_embed: a~c
  # conflicts but c's gradient there is all but lost in its noise (norm 0.1, noise 2): its
  # noise floor unresolved, a~c's sign alone
  clear = known_halves(40, (-0.6, 0.3, 0.2), noise=1.0)
  lost = known_halves(40, (0.0, -0.7, 0.5), noise=2.0, norms=(1.0, 1.0, 0.1), seed=1)
  record = conflicts.Record.from_halves(np.arange(40), np.concatenate([lost, clear], axis=1),
                                        ["token_embed/bias", "pos_embed"], ["a", "b", "c"])
  layers = conflicts.layers_beyond_noise(record)
  assert (layers["by"], layers["cells"], layers["value"]) == ("module", 6, "corrected cos")
  # what it holds: each module's own corrected intervals, Holm over the 6 cells
  ivs = [conflicts.Record.from_halves(record.steps, record.half_gramians[:, r:r + 1],
                                      record.layer_names[r:r + 1], record.task_names
                                      ).corrected_cosine_intervals() for r in range(2)]
  held = stats.holm([iv.p for row in ivs for iv in row]).reshape(2, 3) < 0.05
  for side, beyond in (("conflict", lambda iv: iv.high < 0), ("agreement", lambda iv: iv.low > 0)):
    expected = {(("token_embed", "pos_embed")[r], record.pair_names[k])
                for r in range(2) for k in range(3) if held[r, k] and beyond(ivs[r][k])}
    assert {(c["group"], c["pair"]) for c in layers[side]} == expected
    assert layers[f"{side}_count"] == len(expected)
  first = layers["conflict"][0]  # sized cells before those whose size is not to be read
  assert (first["group"], first["pair"], first["size_readable"]) == ("pos_embed", "a~b", True)
  assert first["cos"]["estimate"] == pytest.approx(ivs[1][0].estimate)
  assert [c["size_readable"] for c in layers["conflict"]] == [True, False]  # token_embed a~c
  text = conflicts.format_summary(conflicts.summarize(record))
  assert "per-module corrected cos beyond noise over all 6 (module, pair) cells" in text
  assert "token_embed a~c  < 0: its sign alone (a noise floor there not resolved)" in text
  few = conflicts.layers_beyond_noise(record.last(3))  # 3 probes: no interval to read anywhere
  assert conflicts.format_layers_beyond_noise(few).endswith(
      "cells (95% intervals, Holm): no cell has an interval (fewer than 4 probes, or none "
      "measurable)")
  [line] = [line for line in text.splitlines() if line.startswith("    pos_embed a~b ")]
  assert line.endswith(f" {ivs[1][0].estimate:+.3f} [{ivs[1][0].low:+.3f}, {ivs[1][0].high:+.3f}]")
