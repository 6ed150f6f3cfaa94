"""TAG task affinity: equals a hand-made lookahead; the store; exhaustive best groupings."""
import functools
import itertools
import os

import jax
import numpy as np
import pytest
import skimage.data

from experiments import tiny
from mtl import degradations, losses, run_state, sharding
from mtl import tasks as tasks_lib
from mtl.conflicts import affinity

TASKS = ("denoise_30", "sr_x2", "derain")


def _tiny(precision="float32"):
  config = tiny.get_config()
  config.tasks = TASKS
  config.data.batch_size = 2
  config.mesh.data = 1
  config.precision = precision
  return config


def test_affinity_equals_a_direct_sgd_lookahead():
  config = _tiny()
  run = run_state.build(config)
  photo = skimage.data.astronaut()
  batch = {}
  for k, spec in enumerate(run.model.specs):
    side = spec.hr_crop(config.model.patch_size)
    batch[spec.name] = np.stack([photo[40 * k + 7 * b:40 * k + 7 * b + side, 30 * b:30 * b + side]
                                 for b in range(2)])
  step = 3
  with jax.set_mesh(run.mesh):
    state = run.init_state()
  params = jax.device_get(state.params)
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  data = {}
  for spec in run.model.specs:  # the step's degradations: keyed by task name
    data[spec.name] = degradations.degrade(
        spec, jax.random.fold_in(key, tasks_lib.task_id(spec.name)), batch[spec.name],
        config.degrade)
  @functools.partial(jax.jit, static_argnums=0)  # one program per task, not op-by-op dispatch
  def loss(name, body):
    x, y = data[name]
    return losses.l1(run.model.apply(dict(params, body=body), name, x), y)
  grads = [jax.jit(jax.grad(lambda b, a=a: loss(a, b)))(params["body"]) for a in TASKS]
  sq = [sum(float((g ** 2).sum()) for g in jax.tree_util.tree_leaves(gr)) for gr in grads]
  # an lr whose first-order decrease of the steepest task is 2% of its loss: Z of O(1e-2);
  # lr 0 asks affinity() for its own step, 1% by the same rule
  steepest = min(float(loss(a, params["body"])) / q for a, q in zip(TASKS, sq))
  fn = jax.jit(affinity.make_affinity(run.model, config, TASKS))
  for given, lr in ((0.02 * steepest, 0.02 * steepest), (0.0, 0.01 * steepest)):
    with jax.set_mesh(run.mesh):
      z = np.asarray(fn(state.params, sharding.to_global(batch, run.mesh), step, given))
    _check_against_sgd_copies(z, lr, params, grads, loss)


def test_a_bfloat16_run_s_affinity_is_measured_in_float32():
  # the lookahead's step is below bfloat16's resolution: measured in bfloat16, sr_x2->derain's
  # sign flipped and denoise<->derain came out half their value; the parameters are float32
  zs = []
  for precision in ("float32", "bfloat16"):
    config = _tiny(precision)
    run = run_state.build(config)
    batch = {s.name: np.stack([skimage.data.astronaut()[:s.hr_crop(48), :s.hr_crop(48)]] * 2)
             for s in run.model.specs}
    with jax.set_mesh(run.mesh):
      state = run.init_state()
      fn = jax.jit(affinity.make_affinity(run.model, config, TASKS))
      zs.append(np.asarray(fn(state.params, sharding.to_global(batch, run.mesh), 3, 0.0)))
  assert run.model.cfg.compute_dtype == "bfloat16"  # the run's own model is not changed
  # one program each, the same float32 arithmetic: equal but for XLA's fusion choices
  np.testing.assert_allclose(zs[1], zs[0], rtol=1e-3, atol=1e-7)


def _check_against_sgd_copies(z, lr, params, grads, loss):
  for i, a in enumerate(TASKS):
    moved = jax.tree.map(lambda p, d: p - lr * d, params["body"], grads[i])  # a copy, plain SGD
    for j, b in enumerate(TASKS):
      want = 1 - float(loss(b, moved)) / float(loss(b, params["body"]))
      # float32 losses ~1e-7 relative apart between two programs: Z to 1e-5 absolute
      assert abs(z[i, j] - want) < 1e-5, (a, b, z[i, j], want)
  assert np.all(np.diag(z) > 0)  # a task's own SGD step lowers its loss at this small lr
  assert np.abs(z).max() > 1e-3  # and the lookahead moved losses measurably


def test_store_appends_replaces_and_truncates(tmp_path):
  wd = str(tmp_path)
  assert affinity.load(wd) is None
  z = np.arange(4 * 4, dtype=np.float64).reshape(4, 2, 2)
  affinity.append(wd, [0, 1], z[:2], ["a", "b"])
  affinity.append(wd, [2, 3], z[2:], ["a", "b"])
  affinity.truncate_after(wd, 2)  # a resume from step 3 measures step 3 again
  affinity.append(wd, [3], z[3:] + 100, ["a", "b"])
  steps, vals, names = affinity.load(wd)
  assert list(steps) == [0, 1, 2, 3] and names == ["a", "b"]
  np.testing.assert_array_equal(vals[:3], z[:3])
  np.testing.assert_array_equal(vals[3], z[3] + 100)
  affinity.append(wd, [1], z[:1] - 5, ["a", "b"])  # a repeated step replaces, never duplicates
  steps, vals, _ = affinity.load(wd)
  assert list(steps) == [0, 1, 2, 3] and vals[1, 0, 0] == -5
  with pytest.raises(ValueError, match="holds tasks"):
    affinity.append(wd, [9], z[:1], ["a", "c"])
  assert not [f for f in os.listdir(os.path.join(wd, "conflicts")) if ".tmp" in f]
  # A damaged or foreign file: one line naming it.
  path = affinity.path_of(wd)
  for arrays in (dict(steps=[0], affinity=z[:1]),  # no task names
                 dict(steps=[0], affinity=np.zeros(7), tasks=np.array(["a", "b"]))):
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"corrupt TAG affinity file {path}: ") as error:
      affinity.load(wd)
    assert "\n" not in str(error.value)


def test_partitions_are_complete_and_best_grouping_is_the_brute_force_optimum():
  # Stirling numbers of the second kind: S(5, 2) = 15, S(5, 3) = 25, S(6, 3) = 90
  for n, k, count in ((5, 2, 15), (5, 3, 25), (6, 3, 90)):
    parts = list(affinity._partitions(list(range(n)), k))
    keys = {tuple(sorted(tuple(sorted(g)) for g in p)) for p in parts}
    assert len(parts) == len(keys) == count
  rng = np.random.default_rng(0)
  z = rng.normal(size=(5, 5))
  groups, score = affinity.best_grouping(z, 2)
  # brute force over group labels
  best = max(
      sum(affinity.group_score(z, [i for i in range(5) if lab[i] == g]) for g in (0, 1))
      for lab in itertools.product((0, 1), repeat=5) if len(set(lab)) == 2)
  assert score == pytest.approx(best)
  # two planted blocks that help each other inside and hurt across are recovered
  planted = np.full((4, 4), -1.0)
  planted[np.ix_([0, 2], [0, 2])] = planted[np.ix_([1, 3], [1, 3])] = 1.0
  assert affinity.best_grouping(planted, 2)[0] == [[0, 2], [1, 3]]
  with pytest.raises(ValueError, match="k=4"):
    affinity.best_grouping(planted[:3, :3], 4)


def test_grouping_scores_each_task_by_the_affinity_onto_it_as_tag():
  # TAG's network selection: each task scores the mean affinity onto it from its group-mates,
  # summed over tasks. 0, 1, 2 help each other by 0.5; 3 gains only 0.1 with 2. {0,1,2} | {3}:
  # 3 tasks x 0.5 = 1.5; {0,1} | {2,3}: 2 x 0.5 + 2 x 0.1 = 1.2 (a mean per group, size-blind,
  # ranked it first: 0.6 against 0.5).
  z = np.zeros((4, 4))
  for i, j in itertools.permutations(range(3), 2):
    z[i, j] = 0.5
  z[2, 3] = z[3, 2] = 0.1
  groups, score = affinity.best_grouping(z, 2)
  assert groups == [[0, 1, 2], [3]] and score == pytest.approx(1.5)


def test_format_prints_matrix_and_grouping():
  z = np.tile(np.array([[0.1, 0.02, -0.03], [0.01, 0.2, -0.01], [-0.02, -0.04, 0.3]]), (6, 1, 1))
  z = z + np.random.default_rng(1).normal(scale=1e-3, size=z.shape)
  text = affinity.format_affinity(np.arange(6), z, list(TASKS))
  assert "best 2 groups" in text and "denoise_30, sr_x2 | derain" in text
  assert "relative change of task j's loss" in text and "> 0: i's step lowers" in text


def test_no_grouping_is_recommended_when_every_interval_includes_zero():
  # Pure noise around 0: every off-diagonal interval holds 0, so no grouping is supported.
  z = np.random.default_rng(2).normal(scale=1e-4, size=(8, 3, 3))
  z -= z.mean(axis=0)  # window means exactly 0: each interval is centred on it
  ivs = affinity.mean_intervals(z)
  assert all(ivs[i][j].low < 0 < ivs[i][j].high for i in range(3) for j in range(3) if i != j)
  text = affinity.format_affinity(np.arange(8), z, list(TASKS))
  assert "best 2 groups" not in text
  assert "no grouping supported by the data" in text
  # One pair far beyond noise is enough for a grouping to be stated (36 steps: 6 batches).
  z = np.random.default_rng(2).normal(scale=1e-4, size=(36, 3, 3))
  z[:, 0, 1] += 1e-3
  text = affinity.format_affinity(np.arange(36), z, list(TASKS))
  assert "best 2 groups" in text and "held over the 6 entries (Holm)" in text


def test_on_pure_noise_a_grouping_is_stated_at_most_at_the_family_wise_rate():
  """Each of the T(T-1) intervals excludes 0 in 5% of noise runs; any of 12 did in 42% of 4-task
  runs. Held over them (Holm), a grouping is stated in at most ~5%: 400 runs of 40 steps, bound
  5% + 3 binomial sd (1.1%)."""
  rng = np.random.default_rng(7)
  stated = sum(affinity.supported(affinity.mean_intervals(rng.normal(size=(40, 4, 4))))
               for _ in range(400))
  assert stated / 400 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400), stated



def test_format_names_a_missing_interval_and_keeps_columns_aligned():
  # Two measured steps: estimates, but no interval (batch means need >= 4 values).
  z = np.random.default_rng(3).normal(scale=1e-3, size=(2, 3, 3))
  lines = affinity.format_affinity(np.arange(2), z, np.asarray(TASKS)).splitlines()  # as stored
  rows = lines[2:5]
  assert all("[no interval]" in r for r in rows) and "nan" not in "\n".join(lines)
  assert len({len(r) for r in lines[1:5]}) == 1  # the header and rows end in one column
  assert "no interval: 2 defined values; an interval needs >= 4" in lines


def test_a_file_of_no_steps_is_nothing_measured(tmp_path):
  wd = str(tmp_path)
  z = np.ones((2, 2, 2))
  affinity.append(wd, [3, 4], z, ["a", "b"])
  affinity.truncate_after(wd, 2)  # a restart before the first measured step: nothing left
  assert not os.path.exists(affinity.path_of(wd)) and affinity.load(wd) is None
  # What such a truncation wrote before: a file of no steps, read as no file.
  np.savez(affinity.path_of(wd), steps=np.zeros(0, np.int64), affinity=np.zeros((0, 2, 2)),
           tasks=np.array(["a", "b"]))
  assert affinity.load(wd) is None
  affinity.append(wd, [5], z[:1], ["a", "b"])
  assert affinity.load(wd)[0].tolist() == [5]


def test_a_run_measures_affinity_at_every_multiple_and_leaves_its_compile_out_of_the_rate(
    tmp_path, capsys):
  from mtl import train
  config = tiny.get_config()
  config.tasks = ("denoise_30", "sr_x2")
  config.data.batch_size, config.mesh.data = 2, 1
  config.total_steps, config.checkpoint_every, config.log_every = 5, 5, 5
  config.conflicts.every = 0
  config.mtl.affinity_every = 2
  config.eval.update(max_side=48, max_images=1)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  steps, values, names = affinity.load(workdir)
  assert list(steps) == [0, 2, 4] and names == ["denoise_30", "sr_x2"]
  assert values.shape == (3, 2, 2) and np.isfinite(values).all()
  # the first lookahead compiles: timed apart, as a step's compile, and not counted in steps/s
  out = capsys.readouterr().out
  assert out.count("compiled the affinity lookahead in ") == 1, out
