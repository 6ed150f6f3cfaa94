"""The array operations IPT is built from beside nnx's layers: softmax attention (cuDNN's through
jax.nn.dot_product_attention on GPUs) and the patch / pixel-shuffle layouts. Pure functions, the
same on every backend."""
import jax
import jax.numpy as jnp


def attention_implementation(dtype, head_dim, backend=None):
  """'cudnn' (jax.nn.dot_product_attention's fused flash attention) on GPUs for the
  half-precision dtypes and head sizes cuDNN takes, else 'softmax' (`softmax_attention`). Chosen by
  backend at trace time: the same model code runs everywhere."""
  backend = backend or jax.default_backend()
  if (backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128):
    return "cudnn"
  return "softmax"


def attention(q, k, v):
  """Softmax attention over (B, N, heads, head_dim): cuDNN through jax.nn.dot_product_attention
  where `attention_implementation` says so, else `softmax_attention`."""
  if attention_implementation(q.dtype, q.shape[-1]) == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (NotImplementedError, RuntimeError, ValueError):  # cuDNN absent or too old
      pass
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  return heads_first(softmax_attention(heads_first(q), heads_first(k), heads_first(v)))


@jax.custom_vjp
def softmax_attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v over (B, heads, N, d), softmax in float32. The same function as
  jax.nn.dot_product_attention, with fewer passes over the (N, N) scores: the softmax's
  normalisation is applied to the (N, d) output, and the backward pass takes the rows' sums
  D = rowsum(dO * O) (as FlashAttention, Dao et al. 2022) instead of rowsum(dP * P); on XLA's
  CPU backend its forward + backward ran in 0.7x the time of dot_product_attention's."""
  return _softmax_attention_fwd(q, k, v)[0]


def _softmax_attention_fwd(q, k, v):
  f32 = jnp.float32
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  scores = jnp.einsum("bhnd,bhmd->bhnm", q, k, preferred_element_type=f32)
  p = jnp.exp(scores - scores.max(-1, keepdims=True))  # unnormalised
  inv_sum = 1.0 / p.sum(-1, keepdims=True)
  out = jnp.einsum("bhnm,bhmd->bhnd", p.astype(v.dtype), v, preferred_element_type=f32) * inv_sum
  return out.astype(v.dtype), (q, k, v, out, p, inv_sum)


def _softmax_attention_bwd(saved, d_out):
  q, k, v, out, p, inv_sum = saved
  f32 = jnp.float32
  d_out = d_out.astype(f32) * inv_sum  # the normalisation's share of every row
  dv = jnp.einsum("bhnm,bhnd->bhmd", p, d_out, preferred_element_type=f32)
  dp = jnp.einsum("bhnd,bhmd->bhnm", d_out, v, preferred_element_type=f32)
  rows = jnp.sum(d_out * out, -1, keepdims=True)
  d_scores = p * (dp - rows)
  dq = jnp.einsum("bhnm,bhmd->bhnd", d_scores, k, preferred_element_type=f32)
  dk = jnp.einsum("bhnm,bhnd->bhmd", d_scores, q, preferred_element_type=f32)
  return ((dq * q.shape[-1] ** -0.5).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))


softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def unfold(x, p):
  """(B, H, W, C) -> (B, (H/p)(W/p), p*p*C) non-overlapping p x p patches, row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def fold(tokens, p, side):
  """Inverse of `unfold` for a square side x side map."""
  b, _, d = tokens.shape
  n, c = side // p, d // (p * p)
  x = tokens.reshape(b, n, n, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, side, side, c)


def pixel_shuffle(x, r):
  """(B, H, W, r*r*C) -> (B, rH, rW, C), channels ordered (r, r, C) (depth-to-space)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * r, w * r, c // (r * r))
