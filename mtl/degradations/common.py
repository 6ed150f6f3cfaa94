"""What the degradations share: parameter ranges from the config, per-sample draws and keys."""
import jax
import jax.numpy as jnp

from mtl import sharding

_HIGHEST = jax.lax.Precision.HIGHEST


def config_range(cfg, name, low, high, block="rain"):
  """A (lo, hi) config range as floats, checked against [low, high]."""
  try:
    lo, hi = (float(v) for v in cfg[name])
  except (TypeError, ValueError):
    lo = hi = float("nan")  # refused below, naming the field
  if not low <= lo <= hi <= high:
    raise ValueError(f"degrade.{block}.{name}={tuple(cfg[name])} must be (lo, hi) with "
                     f"{low} <= lo <= hi <= {high}")
  return lo, hi


def draw(key, bounds):
  """A uniform float32 scalar in the static (lo, hi) `bounds`."""
  return jax.random.uniform(key, (), jnp.float32, *bounds)


def per_sample(fn, key, hr, *args):
  """fn(key_i, hr_i, *args) over a (B, H, W, C) batch, one key per sample."""
  hr = jnp.asarray(hr, jnp.float32)
  if hr.ndim != 4:
    raise ValueError(f"needs a (B, H, W, C) batch, got shape {hr.shape}")
  one = lambda k, x: fn(k, x, *args)
  return sharding.per_batch_shard(jax.vmap(one), jax.random.split(key, hr.shape[0]), hr)


def block(cfg, name, default):
  """The config block `name` of `cfg`, or the default when the config predates it."""
  block = cfg.get(name) if cfg is not None else None
  return default() if block is None else block
