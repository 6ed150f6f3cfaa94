"""Training losses: L1 on pixels, supervised contrastive on the body's tokens (IPT)."""
import jax
import jax.numpy as jnp


def l1(outputs, targets):
  return jnp.mean(jnp.abs(outputs.astype(jnp.float32) - targets))


def supervised_contrastive(tokens, temperature=0.07):
  """SupCon over the L2-normalised tokens of a batch; positives are tokens of the same image.

  tokens: (B, N, D). Each of the B*N tokens is an anchor; its positives are the other N-1
  tokens of its image, its negatives every token of the other images.
  """
  b, n, _ = tokens.shape
  z = tokens.reshape(b * n, -1).astype(jnp.float32)
  z = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)
  logits = (z @ z.T) / temperature
  image = jnp.repeat(jnp.arange(b), n)
  self_mask = jnp.eye(b * n, dtype=bool)
  positive = (image[:, None] == image[None, :]) & ~self_mask
  logits = jnp.where(self_mask, -jnp.inf, logits)  # an anchor is not its own candidate
  log_prob = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  mean_log_prob_pos = jnp.sum(jnp.where(positive, log_prob, 0.0), -1) / (n - 1)
  return -jnp.mean(mean_log_prob_pos)
