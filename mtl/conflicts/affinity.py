"""Task affinity by lookahead (TAG, Fifty et al. 2021): how one task's step moves another's loss.

Z_{i->j} = 1 - L_j(theta_s - lr g_i, theta_j) / L_j(theta_s, theta_j): the shared body theta_s is
moved by one plain SGD step along task i's body gradient g_i, on the same batch, and task j's
loss is compared before and after (task-specific parts unchanged). Z_{i->j} > 0: i's step helps j.

The step size: `lr` > 0 as given (config.mtl.affinity_lr); otherwise one common size per
measurement, AUTO_DECREASE * min_i L_i / |g_i|^2, the step whose first-order decrease of the
steepest task's own loss is 1% of that loss. An Adam learning rate used as an SGD step is no
such size: on IPT's L1 loss on the [0, 255] scale (body gradient norms ~100) lr 3e-3 overshoots,
and even a task's affinity with itself comes out negative.

The store is one file, <workdir>/conflicts/affinity.npz (steps (N,), affinity (N, T, T), tasks),
rewritten atomically (mtl.files) at each checkpoint flush; a resumed run first drops the steps it
will measure again, so steps are neither lost nor repeated.
"""
import io as _io
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np

from mtl import files, run_folder, stats
from mtl.tasks import task_id

FILE = "affinity.npz"
AUTO_DECREASE = 0.01  # the automatic step: first-order decrease of the steepest task's loss


def affinity(model, config, names, params, batch, step, lr, seed=None):
  """(T, T) Z[i, j] = Z_{i->j} at `step` (same degradations as that training step; seed: the
  step's traced hyper['seed'], None for config.seed)."""
  from mtl import step as step_lib  # the step's own degradations and per-task losses
  specs = [model.specs[model.task_names.index(n)] for n in names]
  inputs, targets = step_lib.degrade_batch(specs, [task_id(n) for n in names], config, step,
                                           batch, seed=seed)
  body = params["body"]
  t = len(names)

  def losses_at(bodies):
    return step_lib.task_losses(model, config.loss, names, params, bodies, inputs, targets)

  base, vjp = jax.vjp(losses_at, [body] * t)
  # per-task body gradients from one backward pass: the cotangent e_i reaches only body i
  g = vjp(jnp.ones((t,), base.dtype))[0]
  squared = jnp.stack([sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                           for x in jax.tree.leaves(gi)) for gi in g])
  auto = AUTO_DECREASE * jnp.min(base / jnp.maximum(squared, 1e-30))
  lr = jnp.where(lr > 0, lr, auto)
  rows = []
  for i in range(t):
    moved = jax.tree.map(lambda p, gi: p - lr * gi.astype(p.dtype), body, g[i])
    rows.append(losses_at([moved] * t))
  after = jnp.stack(rows)  # after[i, j] = L_j after task i's step
  return 1.0 - after / base[None, :]


def make_affinity(model, config, names):
  """affinity(params, batch, step, lr, seed=None) with its static arguments bound, ready for
  jax.jit. Computed in float32 whatever the run's precision: the lookahead moves the body by
  ~1e-5 of itself, under bfloat16's resolution (2^-9), where Z came out mostly rounding (a
  sign flipped, others half their float32 value, on the tiny model)."""
  model = model.in_float32()

  def fn(params, batch, step, lr, seed=None):
    return affinity(model, config, tuple(names), params, batch, step, lr, seed)
  return fn


# ----------------------------------------------------------------------------- store


def path_of(workdir):
  return os.path.join(run_folder.conflicts_dir(workdir), FILE)


def load(workdir):
  """(steps (N,), affinity (N, T, T) float64, task names) or None when nothing was measured
  (no file, or one of no steps); ValueError (one line naming the file) for one that is not such
  a record."""
  path = path_of(workdir)
  if not os.path.exists(path):
    return None
  try:
    steps, values, tasks = files.read_arrays(path, ("steps", "affinity", "tasks"))
  except ValueError as error:
    raise ValueError(f"corrupt TAG affinity file {path}: {error}; move it away to analyze the "
                     "rest") from None
  t = len(tasks)
  if not (steps.ndim == 1 and np.issubdtype(steps.dtype, np.integer) and tasks.ndim == 1
          and tasks.dtype.kind == "U" and np.issubdtype(values.dtype, np.floating)
          and values.shape == (len(steps), t, t)):
    raise ValueError(f"corrupt TAG affinity file {path}: steps {steps.shape} {steps.dtype}, "
                     f"affinity {values.shape} {values.dtype}, tasks {tasks.shape} {tasks.dtype}; "
                     "expected (N,) integers, (N, T, T) floats and T names")
  if len(steps) == 0:  # as no file: nothing measured (summaries read the first step)
    return None
  return steps.astype(np.int64), values.astype(np.float64), [str(t) for t in tasks]


def _write(workdir, steps, values, tasks):
  os.makedirs(os.path.dirname(path_of(workdir)), exist_ok=True)
  def write(f):
    buf = _io.BytesIO()
    np.savez(buf, steps=np.asarray(steps, np.int64), affinity=np.asarray(values, np.float32),
             tasks=np.asarray(tasks))
    f.write(buf.getvalue())
  files.write_atomic(path_of(workdir), write)


def append(workdir, steps, values, tasks):
  """Add measured steps (rows for steps already stored are replaced, never duplicated)."""
  steps = np.asarray(steps, np.int64)
  if steps.size == 0:
    return
  old = load(workdir)
  if old is not None:
    if list(old[2]) != list(tasks):
      raise ValueError(f"{path_of(workdir)} holds tasks {old[2]}, not {list(tasks)}; "
                       "use a new --workdir")
    keep = ~np.isin(old[0], steps)
    steps = np.concatenate([old[0][keep], steps])
    values = np.concatenate([old[1][keep], np.asarray(values, np.float64)])
  order = np.argsort(steps, kind="stable")
  _write(workdir, steps[order], np.asarray(values)[order], tasks)


def truncate_after(workdir, step):
  """Drop stored steps > step (a resumed run measures them again); none left: the file goes."""
  old = load(workdir)
  if old is None:
    return
  keep = old[0] <= step
  if not keep.any():
    os.remove(path_of(workdir))
  elif not keep.all():
    _write(workdir, old[0][keep], old[1][keep], old[2])


# ----------------------------------------------------------------------------- summaries


def mean_intervals(values, level=0.95):
  """Window mean of every Z_{i->j} over steps, with stats.window_mean_interval: (T, T) grid."""
  values = np.asarray(values, np.float64)
  t = values.shape[-1]
  return [[stats.window_mean_interval(values[:, i, j], level) for j in range(t)]
          for i in range(t)]


def _partitions(items, k):
  """Every partition of `items` into exactly k non-empty groups (each exactly once)."""
  if k == 1:
    yield [list(items)]
    return
  if len(items) < k:
    return
  first, rest = items[0], items[1:]
  for part in _partitions(rest, k - 1):  # first alone
    yield [[first]] + part
  for part in _partitions(rest, k):  # first joins one of k groups
    for g in range(k):
      yield [grp + [first] if n == g else grp for n, grp in enumerate(part)]


def group_score(z, group):
  """A group's score in TAG's network selection: the sum over its tasks j of the mean of
  Z_{i->j} over the other members i (0 for one task); a mean over the group would rank a large
  group's tasks below a small one's."""
  pairs = [(i, j) for i, j in itertools.permutations(group, 2)]
  return float(sum(z[i, j] for i, j in pairs) / (len(group) - 1)) if pairs else 0.0


def best_grouping(z, k):
  """Partition of the T tasks into k groups maximising the sum of group scores (TAG's rule:
  the total over tasks of the mean affinity onto each from its group). Exhaustive; T <= 9.

  Returns (groups as lists of task indices, total score). Ties: the first partition found.
  """
  z = np.asarray(z, np.float64)
  t = z.shape[0]
  if t > 9:
    raise ValueError(f"{t} tasks; exhaustive grouping supports up to 9")
  if not 1 <= k <= t:
    raise ValueError(f"k={k}; valid: 1 <= k <= {t}")
  best, best_score = None, -np.inf
  for part in _partitions(list(range(t)), k):
    score = sum(group_score(z, g) for g in part)
    if score > best_score + 1e-12:
      best, best_score = [sorted(g) for g in part], score
  return sorted(best), best_score


MEANING = ("Z_(i->j) = 1 - L_j(after one SGD step along task i's body gradient) / L_j(before): "
           "the relative change of task j's loss per lookahead step of task i, as a fraction of "
           "that loss; > 0: i's step lowers j's loss (helps), < 0: raises it (hurts); e.g. "
           "-6e-05 = j's loss rose by 0.006% of itself.")


def supported(ivs, alpha=0.05):
  """Whether any off-diagonal affinity differs from 0 at family-wise level `alpha`, Holm over
  the T(T-1) entries (the data support a grouping): one interval of many excluding 0 by chance
  is no evidence (on pure noise, 42% of 4-task runs had one)."""
  t = len(ivs)
  p = [ivs[i][j].p for i in range(t) for j in range(t) if i != j]
  return bool(np.any(stats.holm(p) < alpha))


def format_affinity(steps, values, tasks, groups=(2,)):
  """The affinity matrix (window means and 95% intervals), what a value means, and the best
  k-groupings, or that the data support none (every off-diagonal interval holds 0)."""
  ivs = mean_intervals(values)
  z = np.array([[iv.estimate for iv in row] for row in ivs])
  def cell(iv):  # fewer than 4 steps give no interval (stats.window_mean_interval)
    if not (np.isfinite(iv.low) and np.isfinite(iv.high)):
      return f"{iv.estimate:+.2e} [no interval]"
    return f"{iv.estimate:+.2e} [{iv.low:+.1e},{iv.high:+.1e}]"
  cells = [[cell(ivs[i][j]) if i != j else "-" for j in range(len(tasks))]
           for i in range(len(tasks))]
  width = max(len(n) for n in tasks) + 2
  col = max(len(c) for c in [*tasks, *(c for row in cells for c in row)]) + 2
  lines = [f"task affinity Z_(row->column) (TAG, Fifty et al. 2021), mean over {len(steps)} "
           f"steps {int(steps[0])}..{int(steps[-1])} [95% interval]:",
           " " * width + "".join(f"{n:>{col}}" for n in tasks)]
  for n, row in zip(tasks, cells):
    lines.append(f"{n:<{width}}" + "".join(f"{c:>{col}}" for c in row))
  why = sorted({ivs[i][j].note for i in range(len(tasks)) for j in range(len(tasks))
                if i != j and "no interval" in cells[i][j]})
  if why:
    lines.append(f"no interval: {'; '.join(why)}")
  lines.append(MEANING)
  wanted = [k for k in groups if 1 < k < len(tasks)]
  entries = len(tasks) * (len(tasks) - 1)
  if wanted and not supported(ivs):
    lines.append(f"no grouping supported by the data: no affinity differs from 0 at the 5% level "
                 f"held over the {entries} entries (Holm; measure more steps: "
                 "config.mtl.affinity_every)")
    return "\n".join(lines)
  if wanted:
    lines.append(f"supported: an affinity differs from 0 at the 5% level held over the "
                 f"{entries} entries (Holm)")
  for k in wanted:
    part, score = best_grouping(z, k)
    named = " | ".join(", ".join(tasks[i] for i in g) for g in part)
    lines.append(f"best {k} groups (max sum over tasks of the mean affinity onto each from its "
                 f"group): {named} (score {score:+.2e})")
  return "\n".join(lines)
