"""The optimizer of a run: Adam(W) with optional global-norm clipping and a learning-rate schedule."""
import optax


def _warmup_then(lr, warmup, decay):
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


LR_SCHEDULES = {
    "constant": lambda o, total: _warmup_then(o.lr, o.warmup_steps, optax.constant_schedule(o.lr)),
    "cosine": lambda o, total: optax.warmup_cosine_decay_schedule(
        0.0, o.lr, o.warmup_steps, max(total, o.warmup_steps + 1), o.lr * o.final_lr_ratio),
    "step": lambda o, total: _warmup_then(o.lr, o.warmup_steps, optax.piecewise_constant_schedule(
        o.lr, {int(m * total) - o.warmup_steps: o.gamma for m in o.milestones})),
}


def make_optimizer(optim_cfg, total_steps):
  schedule = LR_SCHEDULES[optim_cfg.schedule](optim_cfg, total_steps)
  chain = [optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip > 0 else []
  chain.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay))
  return optax.chain(*chain), schedule
