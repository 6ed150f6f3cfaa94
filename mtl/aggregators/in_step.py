"""config.mtl inside the training step: the body's update gradient from the per-task gradients,
the loss weights, and the state both carry between steps."""
import jax
import jax.numpy as jnp

from mtl import gramians  # the step's own per-leaf Gramian (float32, HIGHEST)
from mtl.aggregators.loss_weightings import LOSS_WEIGHTINGS, get_loss_weighting
from mtl.aggregators.weightings import RANDOM, STATEFUL, WEIGHTINGS, get_weighting, init
from mtl.models import ipt


# In the training step: config.mtl -> the body's update gradient, loss weights, carried state.


def _aggregator_args(mtl_cfg):
  args = dict(mtl_cfg.get("aggregator_args", {}) or {})
  return args.pop("per_leaf", False), args


def aggregating(mtl_cfg):
  """Whether the step needs per-task body gradients (any aggregator other than 'sum')."""
  return mtl_cfg is not None and mtl_cfg.get("aggregator", "sum") != "sum"


def _call(name, args):
  shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(args.items()))
  return f"{name}({shown})" if shown else name


def affinity_applies(num_tasks, schedule):
  """Whether TAG's lookahead can measure a run: two or more tasks, every one in every step."""
  return num_tasks >= 2 and schedule == "all"


def affinity_every(mtl_cfg, num_tasks, schedule):
  """The steps between TAG affinity measurements; 0 where none are taken."""
  every = (mtl_cfg or {}).get("affinity_every", 0)
  return every if every > 0 and affinity_applies(num_tasks, schedule) else 0


def describe(mtl_cfg, num_tasks, schedule):
  """{aggregator, loss_weighting[, affinity]}: config.mtl in words, for the banner and HParams
  ('sum' / 'none' / 'off' for a plain run); affinity only where it applies (affinity_applies)."""
  mtl_cfg = mtl_cfg or {}
  per_leaf, args = _aggregator_args(mtl_cfg)
  aggregator = _call(mtl_cfg.get("aggregator", "sum"), args) + (" per leaf" if per_leaf else "")
  lw = mtl_cfg.get("loss_weighting", "")
  described = {"aggregator": aggregator,
               "loss_weighting": _call(lw, dict(mtl_cfg.get("loss_weighting_args", {}) or {}))
                                 if lw else "none"}
  if affinity_applies(num_tasks, schedule):  # one task: nothing to measure, nothing to show
    every, lr = affinity_every(mtl_cfg, num_tasks, schedule), mtl_cfg.get("affinity_lr", 0.0)
    described["affinity"] = ((f"every {every} steps" + (f", lr {lr:g}" if lr else ""))
                             if every else "off")
  return described


def check_config(mtl_cfg, num_tasks, schedule="all"):
  """ValueError (one line) for an unknown aggregator / loss weighting, both at once, a bad
  argument or a bad TAG affinity setting."""
  if mtl_cfg is None:
    return
  name, lw = mtl_cfg.get("aggregator", "sum"), mtl_cfg.get("loss_weighting", "")
  if name != "sum" and lw:  # the step would aggregate the weighted gradients: neither method
    raise ValueError(f"mtl.aggregator={name!r} with mtl.loss_weighting={lw!r}: the aggregator "
                     "would re-weigh the loss-weighted task gradients (IMTL-G undoes the weights "
                     "on the body), a method that is neither; use one: aggregator='sum' or "
                     "loss_weighting=''")
  if (name != "sum" or lw) and schedule != "all":
    raise ValueError(f"mtl.aggregator={name!r} / mtl.loss_weighting needs schedule='all' (every "
                     f"task in every step); got schedule={schedule!r}")
  every, lr = mtl_cfg.get("affinity_every", 0), mtl_cfg.get("affinity_lr", 0.0)
  if not (every >= 0 and 0 <= lr < float("inf")):  # a negative or NaN lr: the automatic step
    raise ValueError(f"mtl.affinity_every={every}, mtl.affinity_lr={lr:g}: both must be >= 0 "
                     "(0: never / the step sized by the gradients)")
  if every > 0 and schedule != "all" and num_tasks >= 2:  # the trainer would measure nothing
    raise ValueError(f"mtl.affinity_every={every} needs schedule='all' (TAG's lookahead takes "
                     f"every task's loss on one step); got schedule={schedule!r}")
  per_leaf, args = _aggregator_args(mtl_cfg)
  if not isinstance(per_leaf, bool):  # any truthy value ('no', 0.5) would switch it on
    raise ValueError(f"mtl.aggregator_args.per_leaf={per_leaf!r}; valid: True (one Gramian per "
                     "parameter leaf) or False (one for the whole body)")
  try:
    get_weighting(name, **args)
  except TypeError as e:  # an argument it has not, or a value of the wrong type
    raise ValueError(f"mtl.aggregator_args={args} for {name!r}: {e}; its arguments: "
                     f"{_arguments(WEIGHTINGS.get(name))}") from None
  pref = args.get("pref_vector")
  if pref is not None and len(pref) != num_tasks:  # else a shape error in the first step
    raise ValueError(f"mtl.aggregator_args.pref_vector={tuple(pref)} for {name!r}: one weight "
                     f"per task, {num_tasks} tasks")
  if lw:
    try:
      get_loss_weighting(lw, num_tasks, **dict(mtl_cfg.get("loss_weighting_args", {}) or {}))
    except TypeError as e:
      raise ValueError(f"mtl.loss_weighting_args for {lw!r}: {e}; its arguments: "
                       f"{_arguments(LOSS_WEIGHTINGS.get(lw), skip=1)}") from None


def _arguments(factory, skip=0):
  """A factory's keyword arguments with their defaults, for a message ('none' if it has none)."""
  import inspect
  if factory is None:
    return "none"
  params = list(inspect.signature(factory).parameters.values())[skip:]
  return ", ".join(f"{p.name}={p.default!r}" for p in params) or "none"


def _loss_weighting(mtl_cfg, num_tasks):
  name = mtl_cfg.get("loss_weighting", "") if mtl_cfg is not None else ""
  if not name:
    return None
  return get_loss_weighting(name, num_tasks, **dict(mtl_cfg.get("loss_weighting_args", {}) or {}))


def init_step_state(mtl_cfg, num_tasks, num_leaves):
  """(trained params, carried state) that config.mtl adds to a run; ({}, {}) for plain sums.

  Trained params (uncertainty's log-variances) live in params['loss_weighting'] so the run's
  optimizer trains them; the carried state (GradVac's EMA targets, DWA's loss history, FAMO's
  logits) lives in TrainState.mtl_state.
  """
  params, state = {}, {}
  if aggregating(mtl_cfg) and mtl_cfg.aggregator in STATEFUL:
    per_leaf, _ = _aggregator_args(mtl_cfg)
    first = init(mtl_cfg.aggregator, num_tasks)
    state["aggregator"] = jnp.tile(first, (num_leaves, 1, 1)) if per_leaf else first
  lw = _loss_weighting(mtl_cfg, num_tasks)
  if lw is not None:
    lw_params, lw_state = lw.init()
    if lw_params:
      params = lw_params
    if lw_state:
      state["loss_weighting"] = lw_state
  return params, state


def combine_losses(mtl_cfg, params, state, losses, key):
  """The scalar the step differentiates and the (T,) loss weights (ones without a weighting)."""
  lw = _loss_weighting(mtl_cfg, losses.shape[0])
  if lw is None:
    return jnp.sum(losses), jnp.ones_like(losses)
  return lw.combine(params, state.get("loss_weighting", {}), losses, key=key)


def update_loss_state(mtl_cfg, state, losses, new_losses):
  """The carried loss-weighting state after the optimizer step (DWA, FAMO)."""
  lw = _loss_weighting(mtl_cfg, losses.shape[0])
  if lw is None or "loss_weighting" not in state:
    return state
  return dict(state, loss_weighting=lw.update(state["loss_weighting"], losses, new_losses))


def aggregate_tree(task_grads, mtl_cfg, key=None, state=None):
  """The update gradient of a pytree of (T, ...) per-task gradients under config.mtl.

  Whole tree by default: one body Gramian (the sum of the per-leaf Gramians, i.e. the Gramian of
  the flattened (T, D) gradients), one weight vector w, update sum_t w_t g_t per leaf, so no
  (T, D) concatenation is formed. aggregator_args.per_leaf=True: each leaf its own Gramian and
  weights; a body's stacked layers count one leaf per layer (mtl.models.ipt.shared_layer_names).
  Returns (update tree, new state dict, weights (T,) or (L, T)).
  """
  state = {} if state is None else state
  name = mtl_cfg.aggregator
  per_leaf, args = _aggregator_args(mtl_cfg)
  weighting = get_weighting(name, **args)
  if per_leaf:  # (T, layers, ...) leaves -> one (T, ...) leaf per layer, restacked at the end
    task_grads = ipt.map_bodies(lambda b: ipt.unstack_layers(b, axis=1), task_grads)
  leaves, treedef = jax.tree_util.tree_flatten(task_grads)
  grams = gramians.leaf_gramians(task_grads)  # (L, T, T)
  num_leaves = grams.shape[0]

  def weigh(g, k, s):
    extra = {"key": k} if name in RANDOM else {}
    if name in STATEFUL:
      return weighting(g, s, **extra)
    return weighting(g, **extra), s

  s_in = state.get("aggregator")
  if s_in is None and name in STATEFUL:  # a state built without config.mtl (e.g. analysis)
    first = init(name, grams.shape[-1])
    s_in = jnp.tile(first, (num_leaves, 1, 1)) if per_leaf else first
  if per_leaf:
    keys = (jax.random.split(key, num_leaves) if key is not None and name in RANDOM
            else [None] * num_leaves)
    ws, ss = [], []
    for l in range(num_leaves):  # a loop, not vmap: the while_loop solvers batch poorly on CPU
      w, s = weigh(grams[l], keys[l], None if s_in is None else s_in[l])
      ws.append(w)
      ss.append(s)
    weights = jnp.stack(ws)
    new_s = jnp.stack(ss) if s_in is not None else None
    out = [jnp.tensordot(w.astype(x.dtype), x, axes=1) for w, x in zip(ws, leaves)]
  else:
    weights, new_s = weigh(grams.sum(0), key, s_in)
    out = [jnp.tensordot(weights.astype(x.dtype), x, axes=1) for x in leaves]
  if s_in is not None:
    state = dict(state, aggregator=new_s)
  update = jax.tree_util.tree_unflatten(treedef, out)
  return ipt.map_bodies(ipt.stack_layers, update), state, weights
