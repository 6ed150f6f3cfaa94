"""The optimizer of a run: Adam(W) with optional global-norm clipping and a learning-rate schedule.
Weight decay (AdamW's, decoupled) applies to the dense and conv kernels only.

The schedule's numbers (peak lr, warmup, decay length, milestones: `schedule_args`) are values,
not constants of the program: the step passes them as a traced argument (`update(...,
schedule_args=...)`), so a study's runs with other learning rates or lengths share one compiled
step. Its formulas are optax's (linear warmup joined to a constant, cosine or step decay), and the
optimizer state is optax.adamw's (a ScaleByScheduleState counts the steps), so checkpoints of
either load into the other.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

# A milestone past any step: pads the step schedule's milestones to a fixed number.
_NEVER = np.iinfo(np.int32).max


def schedule_args(optim_cfg, total_steps):
  """The schedule's numbers for a run of `total_steps`: {name: numpy scalar or array}, the same
  structure and dtypes for every run of one schedule (they enter the step as arguments)."""
  warmup = max(int(optim_cfg.warmup_steps), 0)
  args = {"lr": np.float32(optim_cfg.lr), "warmup": np.int32(warmup)}
  if optim_cfg.schedule == "cosine":
    decay = max(total_steps, warmup + 1) - warmup  # optax.warmup_cosine_decay_schedule's
    args["decay"] = np.float32(decay)
    args["alpha"] = np.float32(0.0 if optim_cfg.lr == 0 else
                               optim_cfg.lr * optim_cfg.final_lr_ratio / optim_cfg.lr)
  elif optim_cfg.schedule == "step":
    # optax.piecewise_constant_schedule's dict: milestones at one step count once.
    bounds = sorted({int(m * total_steps) - warmup for m in optim_cfg.milestones})
    args["bounds"] = np.array(bounds + [_NEVER] * (len(optim_cfg.milestones) - len(bounds)),
                              np.int32)
    args["gamma"] = np.float32(optim_cfg.gamma)
  return args


# The schedules as functions of (args, count, xp): xp=jax.numpy in the step, numpy for the
# logged lr (no device round trip per log line).


def _warmup_then(args, count, xp, decay):
  """optax.join_schedules([linear_schedule(0, lr, warmup), decay], [warmup]); warmup 0: decay."""
  lr, warmup = args["lr"], args["warmup"]
  ramp = xp.clip(count, 0, warmup)
  linear = (0.0 - lr) * (1 - ramp / xp.maximum(warmup, 1)) + lr
  return xp.where(count < warmup, linear, decay(count - warmup))


def _cosine(args, count, xp):
  """optax.cosine_decay_schedule(lr, decay, alpha)."""
  count = xp.minimum(count, args["decay"])
  cosine = 0.5 * (1 + xp.cos(xp.pi * count / args["decay"]))
  return args["lr"] * ((1 - args["alpha"]) * cosine + args["alpha"])


def _steps(args, count, xp):
  """optax.piecewise_constant_schedule(lr, {bound: gamma}), bounds in increasing order."""
  value = args["lr"]
  for i in range(args["bounds"].shape[0]):
    indicator = xp.maximum(0.0, xp.sign(args["bounds"][i] - count))
    value = value * indicator + (1 - indicator) * args["gamma"] * value
  return value


LR_SCHEDULES = {
    "constant": lambda a, c, xp=jnp: _warmup_then(a, c, xp, lambda c: a["lr"]),
    "cosine": lambda a, c, xp=jnp: _warmup_then(a, c, xp, lambda c: _cosine(a, c, xp)),
    "step": lambda a, c, xp=jnp: _warmup_then(a, c, xp, lambda c: _steps(a, c, xp)),
}


def scale_by_schedule_args(name, default_args):
  """optax.scale_by_learning_rate(schedule) whose schedule reads its numbers from the update's
  `schedule_args` (traced in the step; `default_args` when not given). Same state as optax's."""

  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, schedule_args=None, **extra_args):
    del params, extra_args
    step_size = -LR_SCHEDULES[name](
        default_args if schedule_args is None else schedule_args, state.count)
    updates = jax.tree.map(lambda g: jnp.asarray(step_size, g.dtype) * g, updates)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def decay_kernels(weight_decay):
  """optax.add_decayed_weights(weight_decay) on the dense and conv kernels alone: not on biases,
  LayerNorm scales (decay would pull them to 0, not 1), embeddings or a loss weighting's own
  parameters. Its state is add_decayed_weights' (none), so checkpoints load either way."""
  def update_fn(updates, state, params=None):
    if weight_decay == 0:
      return updates, state
    if params is None:
      raise ValueError("weight decay needs the parameters: optimizer.update(grads, state, params)")
    decay = lambda path, g, p: (g + weight_decay * p if getattr(path[-1], "key", None) == "kernel"
                                and "loss_weighting" not in jax.tree_util.keystr(path) else g)
    return jax.tree_util.tree_map_with_path(decay, updates, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(optim_cfg, total_steps):
  """(optimizer, schedule): optax.adamw's chain (after clipping when grad_clip > 0) with the
  schedule's numbers as an update argument, and the run's schedule (step -> lr) for the logs."""
  args = schedule_args(optim_cfg, total_steps)
  chain = [optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip > 0 else []
  chain.append(optax.chain(  # optax.adamw's own chain: its state's structure
      optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
      decay_kernels(optim_cfg.weight_decay),
      scale_by_schedule_args(optim_cfg.schedule, args)))
  # int64: the step schedule's padding milestone minus a step stays in range
  return optax.chain(*chain), lambda count: float(
      LR_SCHEDULES[optim_cfg.schedule](args, np.int64(count), np))
