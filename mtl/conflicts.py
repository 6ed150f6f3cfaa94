"""Gradient conflict between tasks: Gramians, what they tell, and where they are kept.

Everything pairwise about per-task gradients g_1..g_T of the shared body comes from the
Gramian G = J J^T (T x T), G_ij = <g_i, g_j> (see REFERENCE.md section 6). The trainer
reduces, on probe steps, the per-task gradients of every shared leaf l to G_l (L, T, T);
the Gramian of a concatenation is the sum of the Gramians, so block and body Gramians are
sums over leaves.

Sections:
  in-jit      (trainer side) the Gramian computation inside the jitted step.
  derived     cosines, norms, norm ratios, update cosines, conflict fraction of (..., T, T).
  grouping    leaves -> modules -> blocks -> body.
  over steps  GradVac-style EMA.
  store       <workdir>/conflicts/store/: meta.json + append-only chunk-<first>-<last>.npz.
  summaries   numbers for a report, and their text form.

Zero norms: a cosine involving a zero gradient is undefined and is NaN; NaN pairs are
left out of conflict fractions and means (np.nanmean), never counted as conflicts.
Task pairs are named 'a~b' (i < j in task order).
"""
import dataclasses
import json
import os
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# ----------------------------------------------------------------------------- in-jit


def shared_layer_names(body_params):
  """'/'-joined names of the body's leaves, in flattening order (the Gramians' L axis)."""
  paths = jax.tree_util.tree_flatten_with_path(body_params)[0]
  key = lambda k: str(getattr(k, "key", getattr(k, "idx", k)))
  return ["/".join(key(k) for k in path) for path, _ in paths]


_BLOCK_RANK = {"token_embed": 0, "pos_embed": 1, "encoder": 2, "decoder": 3, "out_mlp": 4}


def network_order(layer_names):
  """Permutation putting flattened (alphabetical) leaves in network order for the store."""
  def rank(i):
    parts = layer_names[i].split("/")
    index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    return (_BLOCK_RANK.get(parts[0], len(_BLOCK_RANK)), index, i)
  return sorted(range(len(layer_names)), key=rank)


def gramians(task_grads):
  """Per-leaf Gramians G_l = J_l J_l^T, stacked (L, T, T), from a tree of (T, ...) gradients."""
  def gram(g):
    flat = g.reshape(g.shape[0], -1).astype(jnp.float32)
    return jnp.einsum("ti,si->ts", flat, flat, precision=jax.lax.Precision.HIGHEST)
  return jnp.stack([gram(g) for g in jax.tree_util.tree_leaves(task_grads)])


# ----------------------------------------------------------------------------- derived


def _as_gram(G):
  G = np.asarray(G, np.float64)
  if G.ndim < 2 or G.shape[-1] != G.shape[-2]:
    raise ValueError(f"Gramians must have shape (..., T, T); got {G.shape}")
  return G


def norms(G):
  """Gradient norms |g_i| = sqrt(G_ii): (..., T, T) -> (..., T)."""
  G = _as_gram(G)
  return np.sqrt(np.clip(np.diagonal(G, axis1=-2, axis2=-1), 0.0, None))


def cosines(G):
  """cos(g_i, g_j) = G_ij / sqrt(G_ii G_jj): (..., T, T) -> (..., T, T) in [-1, 1].

  NaN where either gradient is zero (the diagonal too); 1 on the diagonal otherwise.
  """
  G = _as_gram(G)
  n = norms(G)
  denom = n[..., :, None] * n[..., None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    cos = np.where(denom > 0, G / np.where(denom > 0, denom, 1.0), np.nan)
  return np.clip(cos, -1.0, 1.0)  # float rounding can push |cos| a hair above 1


def norm_ratios(G):
  """Pairwise magnitude ratios R_ij = |g_i| / |g_j|: (..., T, T) -> (..., T, T).

  Pairwise rather than a single max/min so that a figure can say which task dominates
  which; max/min over tasks is R.max(axis=(-2, -1)). x/0 = inf, 0/0 = NaN.
  """
  n = norms(G)
  with np.errstate(divide="ignore", invalid="ignore"):
    return n[..., :, None] / n[..., None, :]


def update_cosines(G):
  """cos(g_i, sum_j g_j), each task against the summed update: (..., T, T) -> (..., T).

  = sum_j G_ij / sqrt(G_ii * sum_jk G_jk). NaN where g_i or the summed update is zero.
  """
  G = _as_gram(G)
  total = np.clip(G.sum(axis=(-2, -1)), 0.0, None)[..., None]
  denom = np.sqrt(np.clip(np.diagonal(G, axis1=-2, axis2=-1), 0.0, None) * total)
  with np.errstate(divide="ignore", invalid="ignore"):
    cos = np.where(denom > 0, G.sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)
  return np.clip(cos, -1.0, 1.0)


def pair_indices(num_tasks):
  """(i, j) for i < j, in the order every pair axis in this module uses."""
  return [(i, j) for i in range(num_tasks) for j in range(i + 1, num_tasks)]


def pair_names(task_names):
  """'a~b' for every pair i < j."""
  return [f"{task_names[i]}~{task_names[j]}" for i, j in pair_indices(len(task_names))]


def pair_values(M):
  """Upper-triangle entries of (..., T, T) as (..., P), in `pair_indices` order."""
  M = np.asarray(M)
  i, j = np.triu_indices(M.shape[-1], k=1)
  return M[..., i, j]


def conflict_fraction(G):
  """Fraction of pairs i < j with cos(g_i, g_j) < 0: (..., T, T) -> (...).

  Pairs with an undefined cosine (a zero gradient) are left out; NaN if none is defined
  (or T < 2).
  """
  return share_negative(pair_values(cosines(G)), axis=-1)


def nan_mean(x, axis=None):
  """Mean over the defined (non-NaN) entries; NaN where there are none, without warnings."""
  x = np.asarray(x, np.float64)
  count = (~np.isnan(x)).sum(axis=axis)
  total = np.where(np.isnan(x), 0.0, x).sum(axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def share_negative(x, axis=None):
  """Share of the defined (non-NaN) entries that are < 0: how often cosines conflict."""
  x = np.asarray(x, np.float64)
  neg = np.where(np.isnan(x), np.nan, (np.nan_to_num(x) < 0).astype(np.float64))
  return nan_mean(neg, axis)


# ----------------------------------------------------------------------------- grouping

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


def group(gramians, layer_names, by="block"):
  """Sum per-leaf Gramians (..., L, T, T) into groups -> (names, (..., B, T, T)).

  Groups keep the order of their first leaf (the store keeps leaves in network order);
  by='layer' returns the leaves as they are, by='body' one group named 'body'.
  """
  gramians = np.asarray(gramians)
  if gramians.ndim < 3 or gramians.shape[-3] != len(layer_names):
    raise ValueError(f"gramians of shape {gramians.shape} do not match {len(layer_names)} "
                     "layer names; expected (..., L, T, T)")
  keys = group_keys(layer_names, by)
  if by == "layer":
    return list(layer_names), gramians
  names = list(dict.fromkeys(keys))
  index = np.array([names.index(k) for k in keys])
  out = np.zeros(gramians.shape[:-3] + (len(names),) + gramians.shape[-2:], np.float64)
  for b in range(len(names)):
    out[..., b, :, :] = gramians[..., index == b, :, :].sum(axis=-3, dtype=np.float64)
  return names, out


# ----------------------------------------------------------------------------- over steps


def ema(values, beta, init=0.0):
  """GradVac-style EMA over the leading (step) axis: phi <- (1 - beta) phi + beta x.

  init: phi before the first step; 0.0 as in GradVac (Wang et al. 2021, Alg. 1), or None
  to start from the first value. NaN values (undefined cosines) leave phi unchanged.
  Returns phi after every step, the shape of `values`.
  """
  if not 0.0 < beta <= 1.0:
    raise ValueError(f"ema beta={beta}; valid: 0 < beta <= 1")
  values = np.asarray(values, np.float64)
  out = np.empty_like(values)
  if values.shape[0] == 0:
    return out
  phi = np.array(values[0] if init is None else np.full(values.shape[1:], init), np.float64)
  for s, x in enumerate(values):
    phi = np.where(np.isnan(x), phi, np.where(np.isnan(phi), x, (1 - beta) * phi + beta * x))
    out[s] = phi
  return out


# ----------------------------------------------------------------------------- store

FORMAT = "mtl.conflicts"
VERSION = 1
_CHUNK = re.compile(r"^chunk-(\d{9,})-(\d{9,})\.npz$")


def store_dir(workdir):
  return os.path.join(workdir, "conflicts", "store")


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
  """Probe steps as loaded from a store.

  steps (S,) int64 ascending; gramians (S, L, T, T) float32 with leaves in network order.
  """
  steps: np.ndarray
  gramians: np.ndarray
  layer_names: tuple
  task_names: tuple

  @property
  def num_steps(self):
    return len(self.steps)

  @property
  def pair_names(self):
    return pair_names(self.task_names)

  def grouped(self, by="body"):
    """(group names, Gramians (S, B, T, T)) for `by` in GROUPINGS."""
    return group(self.gramians, self.layer_names, by)

  def cosines(self, by="body"):
    """(S, B, T, T); by='body' gives (S, 1, T, T)."""
    return cosines(self.grouped(by)[1])

  def norms(self, by="body"):
    """(S, B, T)."""
    return norms(self.grouped(by)[1])

  def conflict_fraction(self, by="body"):
    """(S, B): fraction of task pairs with cos < 0."""
    return conflict_fraction(self.grouped(by)[1])

  def update_cosines(self, by="body"):
    """(S, B, T)."""
    return update_cosines(self.grouped(by)[1])

  def last(self, window=None):
    """The last `window` probe steps (all for None or 0)."""
    if not window:
      return self
    if window < 0:
      raise ValueError(f"window={window}; valid: a positive number of probe steps, or 0 for all")
    return self._take(slice(max(0, self.num_steps - window), None))

  def select(self, step_range):
    """Probe steps in [start, end) (either may be None); ValueError if none is selected."""
    start, end = _check_range(step_range)
    keep = np.ones(self.num_steps, bool)
    if start is not None:
      keep &= self.steps >= start
    if end is not None:
      keep &= self.steps < end
    if not keep.any():
      raise ValueError(f"step range {format_range(step_range)} selects no probe step; stored: "
                       f"{_describe_steps(self.steps)}")
    return self._take(keep)

  def window_label(self):
    """'steps a-b (n probes)' for titles."""
    if self.num_steps == 0:
      return "no steps"
    return (f"steps {int(self.steps[0])}-{int(self.steps[-1])} "
            f"({self.num_steps} probe{'s' if self.num_steps != 1 else ''})")

  def _take(self, index):
    return dataclasses.replace(self, steps=self.steps[index], gramians=self.gramians[index])


def parse_step_range(text):
  """'START:END' (half-open, either side may be empty) -> (start, end); '' -> None."""
  if text is None or text.strip() in ("", ":"):
    return None
  match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
  if not match:
    raise ValueError(f"step range {text!r} is not START:END; valid e.g. '100:200', '100:', ':200'")
  start, end = (int(v) if v else None for v in match.groups())
  return _check_range((start, end))


def format_range(step_range):
  if step_range is None:
    return ":"
  start, end = step_range
  return f"{'' if start is None else start}:{'' if end is None else end}"


def _check_range(step_range):
  if step_range is None:
    return None, None
  try:
    start, end = step_range
  except (TypeError, ValueError):
    raise ValueError(f"step range {step_range!r}; valid: (start, end) with ints or None") from None
  if start is not None and end is not None and start >= end:
    raise ValueError(f"step range {format_range(step_range)} is empty; START must be < END")
  return start, end


def _describe_steps(steps):
  if len(steps) == 0:
    return "no probe steps"
  return f"steps {int(steps[0])}..{int(steps[-1])} ({len(steps)} probes)"


def _fsync_dir(path):
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _write_atomic(path, write):
  """write(file) into a temporary file beside `path`, then os.replace it into place."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_dir(os.path.dirname(path))


class Store:
  """The probe store of one workdir: <workdir>/conflicts/store/.

    meta.json                          {"format", "version", "task_names", "layer_names"}
    chunk-<first:09d>-<last:09d>.npz   steps (S,) int64 ascending, gramians (S, L, T, T) float32

  Chunks are written atomically (temporary file + os.replace) and never modified;
  truncation writes a shorter chunk before removing the old one, so a crash at any point
  leaves a loadable store (duplicated steps are dropped on load).
  """

  def __init__(self, workdir):
    self.workdir = workdir
    self.path = store_dir(workdir)
    self.meta_path = os.path.join(self.path, "meta.json")

  def exists(self):
    return os.path.isfile(self.meta_path)

  # --- reading

  def meta(self):
    if not self.exists():
      raise ValueError(f"no conflict store in {self.workdir} (expected {self.meta_path}); "
                       "run training with conflicts.every > 0 and at least two tasks")
    try:
      with open(self.meta_path) as f:
        meta = json.load(f)
    except (OSError, ValueError) as error:
      raise ValueError(f"corrupt conflict store meta {self.meta_path}: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise ValueError(f"{self.meta_path} is not a conflict store meta (format != {FORMAT!r})")
    if meta.get("version") != VERSION:
      raise ValueError(f"{self.meta_path} has format version {meta.get('version')}; "
                       f"this code reads version {VERSION}")
    for key in ("task_names", "layer_names"):
      if not isinstance(meta.get(key), list) or not all(isinstance(n, str) for n in meta[key]):
        raise ValueError(f"corrupt conflict store meta {self.meta_path}: {key} is not a list "
                         "of strings")
    return meta

  def chunks(self):
    """[(first, last, path)] sorted by (first, last)."""
    if not os.path.isdir(self.path):
      return []
    found = []
    for name in os.listdir(self.path):
      match = _CHUNK.match(name)
      if match:
        found.append((int(match.group(1)), int(match.group(2)), os.path.join(self.path, name)))
    return sorted(found)

  def read_chunk(self, path, meta=None):
    """(steps (S,) int64, gramians (S, L, T, T) float32) of one chunk, validated."""
    meta = meta or self.meta()
    shape = (len(meta["layer_names"]), len(meta["task_names"]), len(meta["task_names"]))
    try:
      with np.load(path, allow_pickle=False) as data:
        steps, grams = np.asarray(data["steps"]), np.asarray(data["gramians"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
      raise ValueError(f"corrupt conflict chunk {path}: {type(error).__name__}: {error}; "
                       "delete it to load the rest") from None
    match = _CHUNK.match(os.path.basename(path))
    problem = None
    if steps.ndim != 1 or not np.issubdtype(steps.dtype, np.integer) or len(steps) == 0:
      problem = f"steps has shape {steps.shape} and dtype {steps.dtype}"
    elif grams.shape != (len(steps),) + shape:
      problem = f"gramians has shape {grams.shape}, expected {(len(steps),) + shape}"
    elif np.any(np.diff(steps) <= 0):
      problem = "steps are not strictly increasing"
    elif match and (steps[0], steps[-1]) != (int(match.group(1)), int(match.group(2))):
      problem = f"holds steps {steps[0]}..{steps[-1]}, not the ones its name says"
    if problem:
      raise ValueError(f"corrupt conflict chunk {path}: {problem}; delete it to load the rest")
    return steps.astype(np.int64), grams.astype(np.float32)

  def load(self, step_range=None):
    """The stored probe steps in [start, end) as a Record (see module `load`)."""
    start, end = _check_range(step_range)
    meta = self.meta()
    chunks = self.chunks()
    if not chunks:
      raise ValueError(f"conflict store {self.path} holds no probe steps yet")
    lo, hi = chunks[0][0], max(c[1] for c in chunks)
    wanted = [c for c in chunks
              if (start is None or c[1] >= start) and (end is None or c[0] < end)]
    if not wanted:
      raise ValueError(f"step range {format_range(step_range)} is outside the stored steps "
                       f"{lo}..{hi} in {self.path}")
    parts = [self.read_chunk(path, meta) for _, _, path in wanted]
    steps = np.concatenate([s for s, _ in parts])
    grams = np.concatenate([g for _, g in parts])
    # Sort and keep one entry per step (a crash mid-truncation can leave two chunks with it).
    steps, first = np.unique(steps, return_index=True)
    record = Record(steps=steps, gramians=grams[first], layer_names=tuple(meta["layer_names"]),
                    task_names=tuple(meta["task_names"]))
    if step_range is None:
      return record
    try:
      return record.select((start, end))
    except ValueError:
      raise ValueError(f"step range {format_range(step_range)} selects no probe step; stored: "
                       f"{_describe_steps(steps)} in {self.path}") from None

  # --- writing

  def append(self, steps, gramians, layer_names, task_names):
    """Add probe steps as one new chunk; returns its path (None if `steps` is empty).

    steps (S,) strictly increasing ints >= 0 (or one int); gramians (S, L, T, T) (or
    (L, T, T) for one step). The first append writes meta.json; later ones must pass the
    same layer and task names. Stored steps >= steps[0] belong to a trajectory that was
    abandoned (a resume from an older checkpoint) and are dropped first.
    """
    steps = np.atleast_1d(np.asarray(steps))
    gramians = np.asarray(gramians)
    if gramians.ndim == 3 and steps.shape == (1,):
      gramians = gramians[None]
    layer_names, task_names = [str(n) for n in layer_names], [str(n) for n in task_names]
    if steps.ndim != 1 or not np.issubdtype(steps.dtype, np.integer):
      raise ValueError(f"steps must be a 1-D integer array; got shape {steps.shape}, "
                       f"dtype {steps.dtype}")
    if len(steps) == 0:
      return None
    if np.any(steps < 0) or np.any(np.diff(steps) <= 0):
      raise ValueError(f"steps must be >= 0 and strictly increasing; got {steps.tolist()[:8]}...")
    expected = (len(steps), len(layer_names), len(task_names), len(task_names))
    if gramians.shape != expected:
      raise ValueError(f"gramians of shape {gramians.shape} do not match {len(steps)} steps, "
                       f"{len(layer_names)} layers, {len(task_names)} tasks; expected {expected}")
    if len(set(task_names)) != len(task_names) or len(set(layer_names)) != len(layer_names):
      raise ValueError("task_names and layer_names must be unique")
    os.makedirs(self.path, exist_ok=True)
    if self.exists():
      meta = self.meta()
      for key, given in (("task_names", task_names), ("layer_names", layer_names)):
        if meta[key] != given:
          raise ValueError(f"{key} {_diff(meta[key], given)} differ from the ones stored in "
                           f"{self.meta_path}; use a fresh workdir for a different model or "
                           "task set")
    else:
      meta = dict(format=FORMAT, version=VERSION, task_names=task_names, layer_names=layer_names)
      _write_atomic(self.meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    chunks = self.chunks()
    if chunks and max(c[1] for c in chunks) >= steps[0]:
      logging.warning("conflict store %s: dropping stored probes at steps >= %d, which are "
                      "being re-measured", self.path, int(steps[0]))
      self.truncate_after(int(steps[0]) - 1)
    return self._write_chunk(steps.astype(np.int64), gramians.astype(np.float32))

  def truncate_after(self, step):
    """Drop every stored probe step > `step` (on resume). No store: nothing to do."""
    if not os.path.isdir(self.path):
      return
    for name in os.listdir(self.path):  # leftovers of writes that crashed
      if ".tmp-" in name:
        os.remove(os.path.join(self.path, name))
    for first, last, path in self.chunks():
      if last <= step:
        continue
      if first <= step:
        steps, grams = self.read_chunk(path)
        keep = steps <= step
        self._write_chunk(steps[keep], grams[keep])  # the shorter chunk first, then drop the old
      os.remove(path)
    _fsync_dir(self.path)

  def _write_chunk(self, steps, gramians):
    path = os.path.join(self.path, f"chunk-{int(steps[0]):09d}-{int(steps[-1]):09d}.npz")
    _write_atomic(path, lambda f: np.savez(f, steps=steps, gramians=gramians))
    return path


def _diff(stored, given):
  if len(stored) != len(given):
    return f"(given {len(given)}, stored {len(stored)})"
  i = next(i for i, (a, b) in enumerate(zip(stored, given)) if a != b)
  return f"(at index {i}: given {given[i]!r}, stored {stored[i]!r})"


def append(workdir, steps, gramians, layer_names, task_names):
  """Store.append on <workdir>/conflicts/store."""
  return Store(workdir).append(steps, gramians, layer_names, task_names)


def truncate_after(workdir, step):
  """Store.truncate_after: no stored step > `step` remains."""
  Store(workdir).truncate_after(step)


def load(workdir, step_range=None):
  """All stored probe steps in [start, end) as a Record, sorted, one entry per step.

  step_range: None, or (start, end) with either None. ValueError (one line naming the path
  or value and what is valid) for a missing store, a corrupt meta or chunk, or a range that
  selects no stored step.
  """
  return Store(workdir).load(step_range)


# ----------------------------------------------------------------------------- summaries


def _nan_extreme(fn, x):
  x = x[~np.isnan(x)]
  return float(fn(x)) if x.size else float("nan")


def summarize(record, window=None, top_layers=5):
  """The numbers a report wants over the last `window` probe steps (all for None/0).

  Returns a JSON-friendly dict:
    steps: {first, last, count}; task_names; pairs: the 'a~b' names
    mean_cos: T x T whole-body cosine, mean over steps
    pair: {'a~b': {mean_cos, min_cos, max_cos, last_cos, conflict_fraction}} where
      conflict_fraction is the share of probe steps with whole-body cos < 0
    conflict_fraction: share of (step, pair) with whole-body cos < 0
    layer_conflict_fraction: share of (step, leaf, pair) with per-leaf cos < 0
    mean_norm: {task: mean whole-body gradient norm}; norm_ratio: max/min of those
    mean_update_cos: {task: mean cos(g_i, sum_j g_j)}
    most_conflicted_layers: up to `top_layers` [leaf, share of (step, pair) with cos < 0],
      most often conflicted first (Recon's per-layer count)
  """
  rec = record.last(window)
  names = list(rec.task_names)
  pnames = pair_names(names)
  body = rec.grouped("body")[1][:, 0]
  cos = cosines(body)                                    # (S, T, T)
  pcos = pair_values(cos)                                # (S, P)
  leaf_pcos = pair_values(cosines(rec.gramians))         # (S, L, P)
  mean_norms = nan_mean(norms(body), axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = float(np.max(mean_norms) / np.min(mean_norms)) if len(names) else float("nan")
  per_layer = share_negative(leaf_pcos.transpose(1, 0, 2).reshape(len(rec.layer_names), -1),
                              axis=1)
  order = sorted((i for i in range(len(per_layer)) if not np.isnan(per_layer[i])),
                 key=lambda i: -per_layer[i])[:top_layers]
  return {
      "steps": {"first": int(rec.steps[0]), "last": int(rec.steps[-1]),
                "count": int(rec.num_steps)},
      "task_names": names,
      "pairs": pnames,
      "mean_cos": nan_mean(cos, axis=0).tolist(),
      "pair": {p: {"mean_cos": float(nan_mean(pcos[:, k])),
                   "min_cos": _nan_extreme(np.min, pcos[:, k]),
                   "max_cos": _nan_extreme(np.max, pcos[:, k]),
                   "last_cos": float(pcos[-1, k]),
                   "conflict_fraction": float(share_negative(pcos[:, k]))}
               for k, p in enumerate(pnames)},
      "conflict_fraction": float(share_negative(pcos)),
      "layer_conflict_fraction": float(share_negative(leaf_pcos)),
      "mean_norm": {t: float(v) for t, v in zip(names, mean_norms)},
      "norm_ratio": ratio,
      "mean_update_cos": {t: float(v) for t, v in
                          zip(names, nan_mean(update_cosines(body), axis=0))},
      "most_conflicted_layers": [[rec.layer_names[i], float(per_layer[i])] for i in order],
  }


def format_summary(summary):
  """A short text report of `summarize`'s dict."""
  names, s = summary["task_names"], summary["steps"]
  width = max([len(n) for n in names] + [7])
  lines = [f"gradient conflict, whole body, steps {s['first']}-{s['last']} ({s['count']} probes)",
           "mean cos(g_i, g_j):",
           " " * (width + 1) + " ".join(f"{n:>{width}}" for n in names)]
  for name, row in zip(names, summary["mean_cos"]):
    cells = (f"{np.round(v, 3) + 0.0:>+{width}.3f}" for v in row)  # no '-0.000'
    lines.append(f"{name:<{width}} " + " ".join(cells))
  lines.append("per pair: mean cos [min, max], share of probes with cos < 0:")
  pw = max([len(p) for p in summary["pairs"]] + [4])
  for p in summary["pairs"]:
    e = summary["pair"][p]
    lines.append(f"  {p:<{pw}} {e['mean_cos']:+.3f} [{e['min_cos']:+.3f}, {e['max_cos']:+.3f}]"
                 f"  {100 * e['conflict_fraction']:5.1f}%")
  lines.append(f"conflicting (step, pair): {100 * summary['conflict_fraction']:.1f}% whole body, "
               f"{100 * summary['layer_conflict_fraction']:.1f}% of (step, leaf, pair)")
  lines.append("mean gradient norm: " + ", ".join(
      f"{t} {v:.3g}" for t, v in summary["mean_norm"].items())
               + f" (max/min {summary['norm_ratio']:.2f})")
  lines.append("mean cos with the summed update: " + ", ".join(
      f"{t} {v:+.3f}" for t, v in summary["mean_update_cos"].items()))
  if summary["most_conflicted_layers"]:
    lines.append("most often conflicting leaves (share of (step, pair) with cos < 0): " + ", ".join(
        f"{n} {100 * v:.0f}%" for n, v in summary["most_conflicted_layers"]))
  return "\n".join(lines)
