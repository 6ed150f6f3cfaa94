"""The array operations IPT is built from: 'SAME' convolutions with a faster weight gradient,
attention through jax.nn.dot_product_attention (cuDNN on GPUs), and the patch / pixel-shuffle
layouts. Pure functions, the same on every backend."""
import jax
import jax.numpy as jnp
from flax import nnx


def _lax_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def patches(x, kh, kw):
  """(B, H, W, C) -> (B, H, W, kh*kw*C): each pixel's zero-padded kh x kw neighbourhood, ordered
  (row, column, channel) as an HWIO kernel flattens, so patches @ kernel.reshape(-1, O) is a
  'SAME' convolution (im2col)."""
  b, h, w, _ = x.shape
  x = jnp.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
  return jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], -1)


@jax.custom_vjp
def conv_same(x, kernel):
  """Stride-1 'SAME' convolution, NHWC x HWIO. The same function as lax.conv_general_dilated;
  only the kernel gradient of widening convolutions (O > I: the tails' upsamplers) is formed as
  one im2col matmul, (kh*kw*I, B*H*W) @ (B*H*W, O): XLA's CPU backend computes that 3-7x faster
  than its own weight-gradient convolution at 48-96 px, and a matmul is fast on every backend."""
  return _lax_conv(x, kernel)


def _conv_same_fwd(x, kernel):
  return _lax_conv(x, kernel), (x, kernel)


def _conv_same_bwd(saved, g):
  x, kernel = saved
  kh, kw, cin, cout = kernel.shape
  dx = jax.vjp(lambda x: _lax_conv(x, kernel), x)[1](g)[0]
  if cout > cin:
    cols = patches(x, kh, kw).reshape(-1, kh * kw * cin)
    dw = jnp.matmul(cols.T, g.reshape(-1, cout), preferred_element_type=jnp.float32)
    dw = dw.reshape(kernel.shape).astype(kernel.dtype)
  else:
    dw = jax.vjp(lambda k: _lax_conv(x, k), kernel)[1](g)[0]
  return dx, dw


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def conv(layer: nnx.Conv, x):
  """`layer(x)` for a stride-1 'SAME' nnx.Conv (its parameters, its compute dtype) through
  `conv_same`; the module stays the parameter holder, so parameter names and shapes are nnx's."""
  dtype = layer.dtype or x.dtype
  y = conv_same(x.astype(dtype), layer.kernel[...].astype(dtype))
  return y + layer.bias[...].astype(dtype)


def attention_implementation(dtype, head_dim, backend=None):
  """'cudnn' (fused flash attention) on GPUs for the half-precision dtypes and head sizes cuDNN
  takes, else 'xla'. Chosen by backend at trace time: the same model code runs everywhere."""
  backend = backend or jax.default_backend()
  if (backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128):
    return "cudnn"
  return "xla"


def attention(q, k, v):
  """Softmax attention over (B, N, heads, head_dim) through jax.nn.dot_product_attention."""
  implementation = attention_implementation(q.dtype, q.shape[-1])
  if implementation == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (NotImplementedError, RuntimeError, ValueError):  # cuDNN absent or too old
      pass
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


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
