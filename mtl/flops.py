"""Model FLOPs of IPT, counted from its shapes (for MFU), independent of how XLA compiles it.

Counted per image, forward, multiply-adds as 2 FLOPs, only the matmul-like work:
  convolution k x k, Cin -> Cout, on an H x W output:  2 * k * k * Cin * Cout * H * W
  linear layer in -> out:                                 2 * in * out per token
  attention (scores q k^T and the weighted sum p v):      2 * 2 * N * N * d per head
                                                          (N tokens, d = D / heads)
Training counts 3x the forward (the backward pass computes the gradients of the activations and
of the weights, each about the forward's cost), as PaLM's MFU does (Chowdhery et al. 2022, app. B).
Left out, as small or not the model's: biases, layer norms, softmax, ReLU, residual adds, the
in-step degradations, the optimizer update, the probe's Gramians. Counted where the loss has it:
the supervised contrastive term (IPT's, loss.contrastive_weight > 0), the similarities of a
task's B N body tokens, 2 (B N)^2 D forward (at paper size, batch 256, +29% of a step).

IPT (Chen et al. 2021) at a P x P crop, n_feats F, patch side p, N = (P/p)^2 tokens of D = F p^2:
  head   conv 3x3 3 -> F, then 2 residual blocks of two conv 5x5 F -> F, all at P x P
  body   token embedding (D -> D); per encoder layer q, k, v, out (4 D^2), attention, MLP
         (D -> 4D -> D); per decoder layer self- and cross-attention (8 D^2, two attentions)
         and the MLP; the output MLP (D -> 4D -> D)
  tail   per x2 / x3 stage conv 3x3 F -> r^2 F at the stage's input side, then conv 3x3 F -> 3 at
         the output side (x4: two x2 stages)
At the paper size (F 64, p 3, 12 + 12 layers, 48 x 48 crops) a task's forward is 66-69 GFLOP per
image, 92-97% of it in the body (97% at x1, 92% at x4). XLA's own count (cost_analysis)
differs: it skips the zero-padding taps of 'SAME' convolutions, adds the elementwise work,
counts a scanned layer loop's body once (12 + 12 layers: about half the body) and does not see
inside custom calls (cuDNN's fused attention on GPUs), so it undercounts there.
"""


def conv(k, c_in, c_out, h, w):
  return 2 * k * k * c_in * c_out * h * w


def linear(d_in, d_out, tokens):
  return 2 * d_in * d_out * tokens


def attention(tokens_q, tokens_kv, dim):
  """Scores and weighted sum, all heads together (heads x d = dim)."""
  return 2 * 2 * tokens_q * tokens_kv * dim


def head_forward(model_cfg):
  f, side = model_cfg.n_feats, model_cfg.patch_size
  return conv(3, 3, f, side, side) + 4 * conv(5, f, f, side, side)


def body_forward(model_cfg):
  n, d, ratio = model_cfg.num_tokens, model_cfg.token_dim, model_cfg.mlp_ratio
  mlp = 2 * linear(d, ratio * d, n)
  encoder = 4 * linear(d, d, n) + attention(n, n, d) + mlp
  decoder = 8 * linear(d, d, n) + 2 * attention(n, n, d) + mlp
  return (linear(d, d, n) + model_cfg.num_encoder_layers * encoder
          + model_cfg.num_decoder_layers * decoder + mlp)


TAIL_STAGES = {1: (), 2: (2,), 3: (3,), 4: (2, 2)}


def tail_forward(model_cfg, scale):
  if scale not in TAIL_STAGES:
    raise ValueError(f"scale={scale}; valid: {sorted(TAIL_STAGES)}")
  f, side, total = model_cfg.n_feats, model_cfg.patch_size, 0
  for r in TAIL_STAGES[scale]:
    total += conv(3, f, r * r * f, side, side)
    side *= r
  return total + conv(3, f, 3, side, side)


def forward_per_image(model_cfg, scale):
  """Forward FLOPs of one image through one task of upscaling factor `scale`."""
  return head_forward(model_cfg) + body_forward(model_cfg) + tail_forward(model_cfg, scale)


def contrastive_forward(model_cfg, batch_size):
  """The contrastive term's token similarities over one task's sub-batch (losses.py)."""
  return linear(model_cfg.token_dim, batch_size * model_cfg.num_tokens,
                batch_size * model_cfg.num_tokens)


def train_step(model_cfg, scales, batch_size, contrastive=False):
  """Model FLOPs of one training step: `batch_size` images of each task (its scale in `scales`),
  forward + backward (3x forward); with `contrastive`, the contrastive term of each task too.
  The plain step's: a method's extra passes (an aggregator's per-task backward passes, FAMO's
  forward after the update, a conflict probe's Gramians) are not counted."""
  per_task = contrastive_forward(model_cfg, batch_size) if contrastive else 0
  return 3 * sum(batch_size * forward_per_image(model_cfg, s) + per_task for s in scales)
