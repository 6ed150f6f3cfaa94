"""The training step: one pure function (state, batch) -> (state, metrics[, gramians]).

The batch holds clean uint8 HR crops per task; degradations run inside the step, keyed by
(seed, data step, task): the data step is the run's step + data.step_offset (`data_step`), as
the pipeline's crops are. Every task's forward pass is the model's own `apply` (head -> body ->
tail).

Per-task gradients on the shared body come out of the ordinary backward pass: on probe steps
each task's sub-batch is split into two equal halves a and b (the noise floor of
mtl.gramians) and each half is given its own (identical) reference to the body
parameters, so the gradient with respect to those 2T references is the list of per-half
gradients, in the order [t0a, t0b, t1a, t1b, ...]; their sum is the update's body gradient.
With a probe batch of its own (config.conflicts.batch_size, `probe_gramians`), the probe step
measures them instead on that fresh batch (the pipeline's 'probe:' entries, degradations in a
stream of their own) at the parameters before the update, and the update is a plain step:
the precision of the conflict figures and the training batch are chosen apart; and as it
updates nothing, a contrastive loss term is taken per half, which keeps the halves independent
(on the training batch its negatives span both halves, as the update's do).

config.model.body_calls (`ModelConfig.body_mode`): the step's several body calls (the plain
step's T tasks, the probe's 2T halves) run as one batched computation on GPUs and TPUs
(`IPT.body_batched`: the probe's 2T references are broadcast copies of the body, a `jax.vmap`
over them gives 2T batched matmuls) and one call each on CPUs, where XLA's batched matmuls run
slower than plain ones; 'scanned' runs one body in the program 2T times (`jax.lax.map`: half
the compile time at paper size, slower steps). All modes give the same losses, gradients and
Gramians (tests/test_step_batched.py).

config.mtl (mtl.aggregators): an aggregator other than 'sum' makes every step take the per-task
body gradients and replaces their sum by the aggregator's output (`aggregators.aggregate_tree`);
heads, queries and tails keep their own task's gradient. A loss weighting scales the per-task
losses before the gradient; its trained parameters are params['loss_weighting'] and its carried
state (with GradVac's) TrainState.mtl_state.
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl import aggregators, degradations, gramians, losses, optim
from mtl.data.pipeline import split_probe, step_offset
from mtl.tasks import task_id


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  mtl_state: Any = None  # config.mtl's carried state (dict); None for runs without one
  ema_params: Any = None  # the parameters' EMA (config.optim.ema_decay > 0), else None

# The random streams of config.mtl (PCGrad/GradVac orders, RLW draws) and of the probe batch's
# degradations, apart from task ids and each other.
_MTL_STREAM, _PROBE_STREAM = 2**20, 2**20 + 1


def ema_update(ema_params, params, decay):
  """One step of the parameters' exponential moving average (BasicSR's model_ema):
  decay * ema + (1 - decay) * params, per leaf."""
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)


def step_args(config):
  """The values a study's runs differ in, as the step's traced argument `hyper` (the same
  structure and dtypes for every run, so they share one compiled step): the seed, the
  learning-rate schedule's numbers (mtl.optim.schedule_args) and data.step_offset (int32, as
  the step counter). The seed as jax.random.key takes a Python int without x64: 32 bits,
  unsigned (run_config.validate keeps seeds below 2**32)."""
  return {"seed": np.uint32(config.seed % 2**32),
          "schedule": optim.schedule_args(config.optim, config.total_steps),
          "step_offset": np.int32(step_offset(config.data))}


def data_step(step, hyper):
  """The step whose random draws the run's `step` makes (degradations, the probe batch's,
  config.mtl's): step + data.step_offset. The optimizer's count, the lr schedule, checkpoints
  and logs keep the run's own step."""
  return step + hyper["step_offset"]


@jax.named_scope("degrade")
def degrade_batch(specs, task_ids, config, step, batch, stream=None, seed=None):
  """Degraded inputs and clean targets per task, keyed by (seed, step, task_id(name)); a
  `stream` (an int) keys draws of their own (the probe batch's), apart from the training's.
  seed: traced (the step's hyper['seed']), or None for config.seed."""
  key = jax.random.fold_in(jax.random.key(config.seed if seed is None else seed), step)
  if stream is not None:
    key = jax.random.fold_in(key, stream)
  inputs, targets = {}, {}
  for spec, tid in zip(specs, task_ids):
    inputs[spec.name], targets[spec.name] = degradations.degrade(
        spec, jax.random.fold_in(key, tid), batch[spec.name], config.degrade,
        streaks=batch.get(f"{spec.name}:streaks"), given=batch.get(f"{spec.name}:input"))
  return inputs, targets


@jax.named_scope("loss")
def _task_loss(loss_cfg, out, target, tokens):
  loss = losses.l1(out, target)
  if loss_cfg.contrastive_weight > 0:
    loss = loss + loss_cfg.contrastive_weight * losses.supervised_contrastive(
        tokens, loss_cfg.temperature)
  return loss


def task_losses(model, loss_cfg, names, params, bodies, inputs, targets, scan=False):
  """(T,) per-task losses, each task's forward pass the model's apply (head -> body -> tail).

  bodies: a list, task t's forward pass on body parameters `bodies[t]` (T body calls); or one
  body tree for every task, run over the tasks' stacked inputs by `IPT.body_batched` (scan:
  jax.lax.map; else a concatenation along the batch, exact since the body works per image).
  """
  if isinstance(bodies, list):
    per_task = []
    for name, body in zip(names, bodies):
      out, tokens = model.apply(dict(params, body=body), name, inputs[name], return_tokens=True)
      per_task.append(_task_loss(loss_cfg, out, targets[name], tokens))
    return jnp.stack(per_task)
  feats = [model.head(params["heads"][n], inputs[n]) for n in names]
  res, tokens = model.body_batched(bodies, jnp.stack(feats),
                                   jnp.stack([params["queries"][n] for n in names]), scan=scan)
  per_task = []
  for t, name in enumerate(names):
    spec = model.specs[model.task_names.index(name)]
    out = model.tail(params["tails"][name], spec.scale, res[t] + feats[t])
    per_task.append(_task_loss(loss_cfg, out, targets[name], tokens[t]))
  return jnp.stack(per_task)


def half_task_losses(model, loss_cfg, names, params, bodies, inputs, targets, scan=False,
                     independent_halves=False):
  """(T,) per-task losses, each the mean of its two halves' L1 losses; half h of task t (the
  rows h, h + 2, ... of its sub-batch) runs through the body on its own body parameters, number
  2 t + h of `bodies`: a list of 2T trees (2T body calls), or one tree whose every leaf stacks
  the 2T on a leading axis (`IPT.body_batched`: 2T batched matmuls, or scan: jax.lax.map).

  The model's apply (head -> body -> tail), with only the body run per half: head and tail
  work per image, so they run once on the whole sub-batch (fewer, larger kernels; the probe
  stays within ~1.15x of the plain step). Equal halves make the mean of the halves' means the
  sub-batch mean: the plain step's loss. The contrastive term, if any, is taken over the whole
  sub-batch's tokens as in the plain step (its negatives span both halves), so the update is
  unchanged but that term's half gradients are not independent (the noise floor assumes they
  are; it is exact for the L1 term); with `independent_halves` (a probe batch that updates
  nothing) it is the mean of the two halves' own terms, and the halves are independent.
  """
  split = lambda x: (x[0::2], x[1::2])  # strided: each device's shard splits locally
  merge = lambda a, b: jnp.stack([a, b], axis=1).reshape((-1,) + a.shape[1:])  # batch order
  for name in names:
    if inputs[name].shape[0] % 2:
      raise ValueError(f"task {name}: sub-batch of {inputs[name].shape[0]} cannot be split into "
                       "two equal halves; probe steps need an even data.batch_size")
  feats = {n: model.head(params["heads"][n], inputs[n]) for n in names}
  halves = [h for n in names for h in split(feats[n])]  # [t0a, t0b, t1a, ...]
  queries = [params["queries"][n] for n in names for _ in range(2)]
  if isinstance(bodies, list):
    outputs = [model.body(b, f, q) for b, f, q in zip(bodies, halves, queries)]
  else:
    res, tokens = model.body_batched(bodies, jnp.stack(halves), jnp.stack(queries), stacked=True,
                                     scan=scan)
    outputs = [(res[r], tokens[r]) for r in range(len(halves))]
  per_task = []
  for t, name in enumerate(names):
    spec = model.specs[model.task_names.index(name)]
    (res_a, tok_a), (res_b, tok_b) = outputs[2 * t], outputs[2 * t + 1]
    res, tokens = merge(res_a, res_b), merge(tok_a, tok_b)
    out = model.tail(params["tails"][name], spec.scale, res + feats[name])
    loss = sum(losses.l1(o, y) for o, y in zip(split(out), split(targets[name]))) / 2
    if loss_cfg.contrastive_weight > 0:
      term = (lambda tok: losses.supervised_contrastive(tok, loss_cfg.temperature))
      both = (term(tok_a) + term(tok_b)) / 2 if independent_halves else term(tokens)
      loss = loss + loss_cfg.contrastive_weight * both
    per_task.append(loss)
  return jnp.stack(per_task)


def _half_bodies(body, num_halves, mode):
  """The 2T references to the body whose gradients are the per-half ones: a list (mode
  'looped': one call each) or stacked on a leading axis ('batched', 'scanned')."""
  if mode != "looped":
    return jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, (num_halves,) + p.shape), body)
  return [body] * num_halves


def _gramian_chunk(config):
  return config.conflicts.get("gramian_chunk", 0)  # absent from configs saved before it


def _stacked(g_body):
  return (jax.tree_util.tree_map(lambda *g: jnp.stack(g), *g_body) if isinstance(g_body, list)
          else g_body)


def probe_gramians(params, batch, step, model, config, names, stream=_PROBE_STREAM, seed=None):
  """Per-leaf Gramians (L, 2T, 2T) of the per-half body gradients of the tasks' (unweighted)
  losses on `batch`, at `params`, without an update: the probe batch's measurement
  (conflicts.batch_size). Its degradations are keyed by (seed, step, task) in a stream of their
  own (`stream`; None: the training batch's keys, as probe_step's own Gramians); seed: as
  degrade_batch's. In float32 whatever the run's precision: bfloat16's rounding of the
  activations and outputs is partly shared by the two halves (the L1 sign flips under its
  output spacing, among others), which the noise floor cannot tell from signal; on the tiny
  model it moved corrected cosines by up to 0.013, half their interval."""
  model = model.in_float32()
  specs = [model.specs[model.task_names.index(n)] for n in names]
  inputs, targets = degrade_batch(specs, [task_id(n) for n in names], config, step, batch, stream,
                                  seed)
  specific = {k: v for k, v in params.items() if k != "body"}
  mode = model.cfg.body_mode()
  bodies = _half_bodies(params["body"], 2 * len(names), mode)
  g_body = jax.grad(lambda b: half_task_losses(model, config.loss, names, specific, b, inputs,
                                               targets, mode == "scanned",
                                               independent_halves=True).sum())(bodies)
  with jax.named_scope("gramians"):
    return 4.0 * gramians.leaf_gramians(_stacked(g_body), _gramian_chunk(config))  # x4: see _step


TASK_SUBTREES = ("heads", "queries", "tails")


def _is_absent_leaf(path, absent):
  """Whether a leaf's tree path runs through heads/queries/tails/<an absent task>."""
  keys = [getattr(k, "key", None) for k in path]
  return any(a in TASK_SUBTREES and b in absent for a, b in zip(keys, keys[1:]))


def keep_absent_tasks(absent, old_params, params, old_opt_state, opt_state):
  """Parameters and optimizer-state leaves (Adam's moments) of the tasks `absent` from a step,
  put back to their values before it: PyTorch's Adam skips parameters whose grad is None, while
  optax would decay the absent tasks' moments and move their parameters on zero gradients.
  One difference stays: optax's step count (Adam's bias correction, the lr schedule) is one for
  all parameters, where torch.optim.Adam counts steps per parameter, so a task's head returning
  after absent steps is bias-corrected with the global count, not its own (smaller) one."""
  if not absent:
    return params, opt_state
  keep = lambda path, old, new: old if _is_absent_leaf(path, absent) else new
  return (jax.tree_util.tree_map_with_path(keep, old_params, params),
          jax.tree_util.tree_map_with_path(keep, old_opt_state, opt_state))


def _step(state, batch, hyper, model, config, optimizer, names, plan, split):
  """The shared step; hyper: step_args (None: the config's, as constants). split: each half of each task's sub-batch gets its own (identical)
  reference to the body, so the gradient with respect to those 2T references is the list of
  per-half body gradients, and the step also returns their per-leaf Gramians (L, 2T, 2T).
  An aggregator (plan.aggregate: config.mtl) takes the split path on every step."""
  mtl_cfg = config.get("mtl")
  hyper = step_args(config) if hyper is None else hyper
  aggregate = plan.aggregate
  split = split or aggregate  # an aggregator needs the per-task body gradients on every step
  specs = [model.specs[model.task_names.index(n)] for n in names]
  draw = data_step(state.step, hyper)
  inputs, targets = degrade_batch(specs, [task_id(n) for n in names], config, draw, batch,
                                  seed=hyper["seed"])
  specific = {k: v for k, v in state.params.items() if k != "body"}
  body = state.params["body"]
  mode = model.cfg.body_mode()
  scan, looped = mode == "scanned", mode == "looped"
  bodies = _half_bodies(body, 2 * len(names), mode) if split else body
  mtl_state = state.mtl_state if state.mtl_state is not None else {}
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(hyper["seed"]), draw), _MTL_STREAM)
  key_loss, key_agg = jax.random.split(key)

  def total_loss(specific, bodies):
    if split:
      per_task = half_task_losses(model, config.loss, names, specific, bodies, inputs, targets,
                                  scan)
    else:
      per_task = task_losses(model, config.loss, names, specific,
                             [bodies] * len(names) if looped else bodies, inputs, targets, scan)
    total, weights = aggregators.combine_losses(
        mtl_cfg, specific.get("loss_weighting", {}), mtl_state, per_task, key_loss)
    return total, (per_task, weights)

  (weighted, (per_task, loss_w)), (g_specific, g_body) = jax.value_and_grad(
      total_loss, argnums=(0, 1), has_aux=True)(specific, bodies)
  grams, agg_w = None, None
  if split:
    # A half's reference carries half of its own loss's gradient (per-task loss = mean of the
    # halves): the Gramian of the halves' own gradients is 2^2 times that of the references.
    with jax.named_scope("gramians"):
      g_body = _stacked(g_body)  # (2T, ...) per leaf
      grams = 4.0 * gramians.leaf_gramians(g_body, _gramian_chunk(config))
      # the references carry the weighted losses' gradients: the tasks' own are w_t-th of them
      # (a loss weighting's w_t > 0), as probe_gramians measures them
      w2 = jax.lax.stop_gradient(jnp.repeat(loss_w.astype(grams.dtype), 2))
      grams = grams / (w2[:, None] * w2[None, :])
    if aggregate:  # the task gradients, g_t = the sum of its two references' gradients
      per_task_grads = jax.tree_util.tree_map(
          lambda g: g.reshape((len(names), 2) + g.shape[1:]).sum(1), g_body)
      g_body, mtl_state, agg_w = aggregators.aggregate_tree(per_task_grads, mtl_cfg, key_agg,
                                                            mtl_state)
    else:
      g_body = jax.tree_util.tree_map(lambda g: g.sum(0), g_body)
  grads = dict(g_specific, body=g_body)  # tasks absent from a one-task step get zeros
  # mtl.optim's schedule reads its numbers from schedule_args; other optimizers ignore them
  with jax.named_scope("optimizer"):
    updates, opt_state = optax.with_extra_args_support(optimizer).update(
        grads, state.opt_state, state.params, schedule_args=hyper["schedule"])
    params = optax.apply_updates(state.params, updates)
    absent = tuple(n for n in model.task_names if n not in names)
    params, opt_state = keep_absent_tasks(absent, state.params, params, state.opt_state,
                                          opt_state)
  if "loss_weighting" in mtl_state:  # DWA's history, FAMO's logits (FAMO: losses after the step)
    new_losses = per_task
    if mtl_cfg.loss_weighting == "famo":
      new_losses = task_losses(model, config.loss, names, params, [params["body"]] * len(names)
                               if looped else params["body"], inputs, targets, scan)
    mtl_state = aggregators.update_loss_state(mtl_cfg, mtl_state, per_task, new_losses)
  metrics = {f"loss/{n}": per_task[i] for i, n in enumerate(names)}
  metrics["loss/total"] = per_task.sum()
  metrics["grad_norm"] = optax.tree.norm(grads)
  if mtl_cfg is not None and mtl_cfg.get("loss_weighting", ""):
    metrics["loss/weighted"] = weighted
    metrics.update({f"mtl/loss_weight/{n}": loss_w[i] for i, n in enumerate(names)})
  if agg_w is not None:
    agg_w = agg_w.reshape(-1, len(names)).mean(0)  # per_leaf: the mean over leaves
    metrics.update({f"mtl/weight/{n}": agg_w[i] for i, n in enumerate(names)})
  new_mtl = mtl_state if (state.mtl_state is not None or mtl_state) else None
  ema = (None if state.ema_params is None else
         ema_update(state.ema_params, params, config.optim.ema_decay))
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, mtl_state=new_mtl,
                        ema_params=ema)
  return state, metrics, grams


def train_step(state, batch, hyper=None, *, model, config, optimizer, names, plan):
  """One optimizer step on the tasks `names`: (state, batch[, hyper]) -> (state, metrics);
  hyper: step_args(config), traced (None: the same values as constants)."""
  state, metrics, _ = _step(state, batch, hyper, model, config, optimizer, names, plan,
                            split=False)
  return state, metrics


def probe_step(state, batch, hyper=None, *, model, config, optimizer, names, plan):
  """train_step that also returns the per-leaf Gramians (L, 2T, 2T) of the per-half body
  gradients (order [t0a, t0b, t1a, ...]; mtl.conflicts.task_gramian gives the per-task
  (L, T, T)). With plan.batch_size (conflicts.batch_size) they come from the probe batch (the
  pipeline's probe entries, `split_probe`, `probe_gramians`) at the parameters before the update, which
  is a plain step on the training batch; else from the step's own backward pass on the
  training batch's halves (the same update up to float rounding). Each task's sub-batch must
  be even."""
  if plan.batch_size:
    hyper = step_args(config) if hyper is None else hyper
    batch, probe = split_probe(batch)
    grams = probe_gramians(state.params, probe, data_step(state.step, hyper), model, config,
                           names, seed=hyper["seed"])
    state, metrics, _ = _step(state, batch, hyper, model, config, optimizer, names, plan,
                              split=False)
    return state, metrics, grams
  return _step(state, batch, hyper, model, config, optimizer, names, plan, split=True)


def naive_probe_step(state, batch, hyper=None, *, model, config, optimizer, names, plan):
  """The reference the benchmark compares probe_step with: Gramians from `jax.jacrev` of the
  loss vector, i.e. T extra backward passes (per task, no halves: (L, T, T))."""
  state_out, metrics = train_step(state, batch, hyper, model=model, config=config,
                                  optimizer=optimizer, names=names, plan=plan)
  specs = [model.specs[model.task_names.index(n)] for n in names]
  hyper = step_args(config) if hyper is None else hyper
  inputs, targets = degrade_batch(specs, [task_id(n) for n in names], config,
                                  data_step(state.step, hyper), batch, seed=hyper["seed"])
  jacobian = jax.jacrev(lambda body: task_losses(model, config.loss, names, state.params,
                                                 [body] * len(names), inputs, targets))
  return state_out, metrics, gramians.leaf_gramians(jacobian(state.params["body"]))


STEPS = {False: train_step, True: probe_step, "jacrev": naive_probe_step}


def make_step(model, config, optimizer, names, plan, probe=False):
  """The step over `names` with its static arguments bound, ready for jax.jit: (state, batch,
  hyper=None); pass hyper=step_args(config) so runs that differ only in those values share it.

  plan: the run's ProbePlan (mtl.run_config.probe_plan). probe=False: train_step; True:
  probe_step; 'jacrev': naive_probe_step.
  """
  return functools.partial(STEPS[probe], model=model, config=config, optimizer=optimizer,
                           names=tuple(names), plan=plan)
