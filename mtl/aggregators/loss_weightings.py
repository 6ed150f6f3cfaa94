"""Loss weightings: per-task losses -> one scalar loss (uncertainty, DWA, RLW, FAMO), as LibMTL
(Lin & Zhang 2023) computes them."""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


# Loss weightings: per-task losses -> one scalar loss. LibMTL's formulas (Lin & Zhang 2023).


class LossWeighting(NamedTuple):
  """A pure loss weighting for T tasks.

  init() -> (params, state): params are trained with the model (uncertainty's log-variances; an
    empty dict otherwise), state is carried by the trainer but not differentiated.
  combine(params, state, losses, key=None) -> (total, weights): the scalar to differentiate (with
    respect to the model through `losses` and to `params`) and the (T,) weights for logging.
  update(state, losses, new_losses) -> state: after the optimiser step; `losses` are the ones
    combined, `new_losses` the same batch's losses after the step (FAMO; others ignore them).
  """
  init: Callable[[], Any]
  combine: Callable[..., Any]
  update: Callable[..., Any]


def _keep(state, losses, new_losses=None):
  del losses, new_losses
  return state


def uncertainty_weighting(num_tasks, init_log_var=-0.5):
  """Kendall et al. (2018) as LibMTL's UW: sum_i L_i / (2 exp(s_i)) + s_i / 2, s = log var."""
  def init():
    return {"log_var": jnp.full((num_tasks,), init_log_var, jnp.float32)}, {}

  def combine(params, state, losses, key=None):
    del state, key
    s = params["log_var"]
    return jnp.sum(losses / (2 * jnp.exp(s)) + s / 2), jax.lax.stop_gradient(1 / (2 * jnp.exp(s)))
  return LossWeighting(init, combine, _keep)


def dwa_weighting(num_tasks, temperature=2.0, steps_per_epoch=100):
  """Dynamic Weight Average (Liu et al. 2019): T softmax((L_{e-1} / L_{e-2}) / temperature).

  L_e is the mean loss of epoch e (here `steps_per_epoch` calls of `update`); weights are 1 until
  two epochs are complete, as in LibMTL.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"dwa steps_per_epoch={steps_per_epoch}; valid: an integer >= 1")
  if not temperature > 0:  # it divides the loss ratios
    raise ValueError(f"dwa temperature={temperature}; valid: > 0 (2.0 in the paper)")

  def init():
    return {}, {"history": jnp.ones((2, num_tasks), jnp.float32),
                "epochs": jnp.zeros((), jnp.int32),
                "running": jnp.zeros((num_tasks,), jnp.float32),
                "count": jnp.zeros((), jnp.int32)}

  def combine(params, state, losses, key=None):
    del params, key
    ratio = state["history"][1] / state["history"][0]
    w = jnp.where(state["epochs"] >= 2, num_tasks * jax.nn.softmax(ratio / temperature), 1.0)
    w = jax.lax.stop_gradient(w.astype(losses.dtype))
    return jnp.sum(w * losses), w

  def update(state, losses, new_losses=None):
    del new_losses
    running = state["running"] + jax.lax.stop_gradient(losses).astype(jnp.float32)
    count = state["count"] + 1
    done = count >= steps_per_epoch
    history = jnp.where(done, jnp.stack([state["history"][1], running / count]), state["history"])
    return {"history": history, "epochs": state["epochs"] + done.astype(jnp.int32),
            "running": jnp.where(done, 0.0, running), "count": jnp.where(done, 0, count)}
  return LossWeighting(init, combine, update)


def rlw_weighting(num_tasks):
  """Random Loss Weighting (Lin et al. 2022) as LibMTL: softmax of a standard normal draw."""
  def init():
    return {}, {}

  def combine(params, state, losses, key=None):
    del params, state
    if key is None:
      raise ValueError("rlw needs key=<a jax.random key>; got None")
    w = jax.nn.softmax(jax.random.normal(key, (num_tasks,))).astype(losses.dtype)
    return jnp.sum(w * losses), w
  return LossWeighting(init, combine, _keep)


def famo_weighting(num_tasks, lr=0.025, weight_decay=1e-3, eps=1e-8, betas=(0.9, 0.999)):
  """FAMO (Liu et al. 2023) as LibMTL: weights z / (c D), D = L + 1e-8, z = softmax(logits).

  c = sum z / D, so the weights sum to 1.

  The gradient of sum_i w_i L_i equals that of FAMO's sum_i z_i log(L_i) / c. `update` moves the
  logits by torch.optim.Adam (L2 weight decay) along the softmax-Jacobian product with the
  decrease of log losses from `losses` to `new_losses`.
  """
  if lr < 0:  # a step up FAMO's objective
    raise ValueError(f"famo lr={lr}; valid: >= 0 (0.025 in LibMTL)")
  b1, b2 = betas

  def init():
    z = jnp.zeros((num_tasks,), jnp.float32)
    return {}, {"logits": z, "m": z, "v": z, "step": jnp.zeros((), jnp.int32)}

  def combine(params, state, losses, key=None):
    del params, key
    z = jax.nn.softmax(state["logits"]).astype(losses.dtype)
    d = jax.lax.stop_gradient(losses) + 1e-8
    w = jax.lax.stop_gradient(z / d / jnp.sum(z / d))
    return jnp.sum(w * losses), w

  def update(state, losses, new_losses):
    x = state["logits"]
    def log_d(l):
      return jnp.log(jax.lax.stop_gradient(l) + 1e-8)
    delta = (log_d(losses) - log_d(new_losses)).astype(x.dtype)
    z = jax.nn.softmax(x)
    grad = z * (delta - z @ delta) + weight_decay * x  # softmax VJP, then Adam's L2 decay
    step = state["step"] + 1
    m = b1 * state["m"] + (1 - b1) * grad
    v = b2 * state["v"] + (1 - b2) * grad * grad
    m_hat = m / (1 - b1 ** step.astype(x.dtype))
    v_hat = v / (1 - b2 ** step.astype(x.dtype))
    return {"logits": x - lr * m_hat / (jnp.sqrt(v_hat) + eps), "m": m, "v": v, "step": step}
  return LossWeighting(init, combine, update)


LOSS_WEIGHTINGS = {
    "uncertainty": uncertainty_weighting,
    "dwa": dwa_weighting,
    "rlw": rlw_weighting,
    "famo": famo_weighting,
}


def get_loss_weighting(name, num_tasks, **kwargs):
  """Loss weighting `name` for `num_tasks` tasks (a LossWeighting of pure functions)."""
  if name not in LOSS_WEIGHTINGS:
    raise ValueError(f"unknown loss weighting {name!r}; valid: {sorted(LOSS_WEIGHTINGS)}")
  return LOSS_WEIGHTINGS[name](num_tasks, **kwargs)
