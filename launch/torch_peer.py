"""Times the official PyTorch IPT (Chen et al., 2021; huawei-noah/Pretrained-IPT) step by step on
request, so that launch/benchmark.py can interleave its steps with mtl's in one run.

Run by launch/benchmark.py with a Python that has torch (never a dependency of mtl):
  /path/to/python launch/torch_peer.py --ipt_repo=PATH --n_feats=32 --layers=2 --heads=4 --batch=8
  /path/to/python launch/torch_peer.py --ipt_repo=PATH --n_feats=64 --layers=12 --heads=12 \
      --device=cuda                                   # on the GPU that mtl's steps run on

Protocol, one line each way: the peer prints `ready <parameter count>` once built; then for each
request line it runs one step and prints `ms <milliseconds>`; a request may end in a precision:
  fp32   (the default) PyTorch's defaults, as the official code runs: on CUDA, FP32 matmuls
         (torch.backends.cuda.matmul.allow_tf32 False) and TF32 convolutions (cudnn.allow_tf32
         True)
  tf32   TF32 matmuls and convolutions (both allow_tf32 True): the arithmetic of mtl's float32 on
         GPUs, where JAX's default precision runs both as TF32
  bf16   the forward pass under torch.autocast to bfloat16, as PyTorch's mixed precision trains
         (parameters, gradients and Adam stay float32), PyTorch's TF32 defaults otherwise
On a CPU, fp32 and tf32 are the same arithmetic (TF32 is a GPU tensor-core mode). Requests:
  ipt <t>    one IPT training step of task index t (Adam, L1 loss), as the official trainer does
  pertask    every task at the same parameters, one backward per task, the body's per-task
             gradients kept apart and their cosine matrix formed, one Adam step on the sum
  stage <s>  one stage alone, forward + backward to its parameters (as launch/benchmark.py's
             profile section times mtl's): head, body, encoder_layer, attention, mlp, adam,
             tail:<task index>
  quit       exit
On CUDA the time is taken between torch.cuda.synchronize() calls, so it is the step's whole run on
the device (PyTorch launches kernels asynchronously). The TF32 switches are set before each
request's timing starts, with the legacy allow_tf32 flags alone (torch 2.9+ refuses a mix of
those and the fp32_precision ones).
"""
import argparse
import os
import sys
import time
import types


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ipt_repo", required=True, help="checkout of huawei-noah/Pretrained-IPT")
  parser.add_argument("--n_feats", type=int, default=32)
  parser.add_argument("--patch_size", type=int, default=48)
  parser.add_argument("--patch_dim", type=int, default=3)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--scales", default="2,3,4,1,1,1", help="one upscaling factor per task")
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
  args = parser.parse_args()

  import contextlib
  import warnings
  import torch
  # torch 2.9+ asks for its fp32_precision settings instead of allow_tf32 (still honoured)
  warnings.filterwarnings("ignore", message="Please use the new API settings to control TF32")
  torch.set_num_threads(args.threads)
  if args.device == "cuda" and not torch.cuda.is_available():
    raise ValueError("--device=cuda but this torch sees no CUDA device (torch "
                       f"{torch.__version__}); give --device=cpu or a CUDA build of torch")
  device = torch.device(args.device)
  sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
  # precision: (the forward pass's context, (TF32 for cuBLAS matmuls, TF32 for cuDNN convs))
  defaults = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
  precisions = {
      "fp32": (contextlib.nullcontext, defaults),
      "tf32": (contextlib.nullcontext, (True, True)),
      "bf16": (lambda: torch.autocast(args.device, dtype=torch.bfloat16), defaults)}
  if not os.path.isfile(os.path.join(args.ipt_repo, "model", "ipt.py")):
    raise FileNotFoundError(f"--ipt_repo={args.ipt_repo} has no model/ipt.py; give a checkout of "
                            "huawei-noah/Pretrained-IPT")
  sys.path.insert(0, args.ipt_repo)
  from model import ipt as official  # noqa: E402  (the user's checkout, imported by path)

  scales = [int(s) for s in args.scales.split(",")]
  model_args = types.SimpleNamespace(
      n_feats=args.n_feats, patch_size=args.patch_size, patch_dim=args.patch_dim,
      num_heads=args.heads, num_layers=args.layers, num_queries=len(scales), scale=scales,
      rgb_range=255, n_colors=3, dropout_rate=0.0, no_mlp=False, pos_every=False, no_pos=False,
      no_norm=False)
  torch.manual_seed(0)
  model = official.ipt(model_args).to(device)
  params = [p for p in model.parameters() if p.requires_grad]
  body_ids = {id(p) for p in model.body.parameters()}
  optimizer = torch.optim.Adam(params, 1e-4)
  side = args.patch_size
  inputs = torch.rand(args.batch, 3, side, side, device=device) * 255
  targets = {s: torch.rand(args.batch, 3, side * s, side * s, device=device) * 255
             for s in set(scales)}
  autocast = [contextlib.nullcontext]  # the current request's precision

  def task_loss(t):
    model.set_scale(t)
    with autocast[0]():
      out = model(inputs)
    return (out.float() - targets[scales[t]]).abs().mean()

  def ipt_step(t):
    optimizer.zero_grad()
    task_loss(t).backward()
    optimizer.step()

  def pertask_step():
    total = [torch.zeros_like(p) for p in params]
    rows = []
    for t in range(len(scales)):
      grads = torch.autograd.grad(task_loss(t), params, allow_unused=True)
      row = []
      for p, g, acc in zip(params, grads, total):
        g = torch.zeros_like(p) if g is None else g
        acc += g
        if id(p) in body_ids:
          row.append(g.reshape(-1))
      rows.append(torch.cat(row))
    for p, acc in zip(params, total):
      p.grad = acc
    g = torch.stack(rows)
    norms = g.norm(dim=1, keepdim=True)
    cosines = (g @ g.T) / (norms @ norms.T)
    optimizer.step()
    return cosines

  stage = stages(model, optimizer, params, args, device, autocast)
  print(f"torch {torch.__version__} on "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}; TF32 (matmul, "
        "cuDNN) per precision: " + ", ".join(f"{p} {tf32}" for p, (_, tf32) in precisions.items()),
        file=sys.stderr, flush=True)
  print(f"ready {sum(p.numel() for p in params)}", flush=True)
  for line in sys.stdin:
    words = line.split()
    if not words or words[0] == "quit":
      break
    context, tf32 = precisions[words.pop() if len(words) > 1 and words[-1] in precisions
                               else "fp32"]
    autocast[0] = context
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    sync()
    start = time.perf_counter()
    if words[0] == "ipt":
      ipt_step(int(words[1]))
    elif words[0] == "pertask":
      pertask_step()
    elif words[0] == "stage" and len(words) == 2 and words[1].partition(":")[0] in stage:
      name, _, index = words[1].partition(":")  # tail:<task index>; the others take none
      stage[name](*([int(index)] if index else []))
    else:
      raise ValueError(f"request {line.strip()!r}; valid: 'ipt <task index>', 'pertask', "
                       f"'stage <{'|'.join(stage)}>', 'quit', each optionally ending in "
                       f"{' or '.join(precisions)}")
    sync()
    print(f"ms {(time.perf_counter() - start) * 1e3:.3f}", flush=True)


def stages(model, optimizer, params, args, device, autocast):
  """{name: fn(*index)}: each stage of a one-task step alone, forward + backward to its own
  parameters on inputs that need no gradient, as mtl's profile section times its stages; the
  forward under the request's precision (autocast[0])."""
  import torch
  side, feats = args.patch_size, args.n_feats
  tokens_per_image = (side // args.patch_dim) ** 2
  images = torch.rand(args.batch, 3, side, side, device=device) * 255
  maps = torch.ones(args.batch, feats, side, side, device=device)
  # The official transformer works on (tokens, batch, dim).
  tokens = torch.randn(tokens_per_image, args.batch, feats * args.patch_dim ** 2, device=device)
  encoder_layer = model.body.encoder.layers[0]

  def backward(module, forward):
    module.zero_grad(set_to_none=True)
    with autocast[0]():
      out = forward()
    out.float().sum().backward()

  def adam():
    for p in params:
      p.grad = torch.ones_like(p)
    optimizer.step()

  mlp = lambda x: encoder_layer.linear2(encoder_layer.activation(encoder_layer.linear1(x)))
  return {
      "head": lambda: backward(model.head[0], lambda: model.head[0](images)),
      "body": lambda: backward(model.body, lambda: model.body(maps, 0)),
      "encoder_layer": lambda: backward(encoder_layer, lambda: encoder_layer(tokens)),
      "attention": lambda: backward(encoder_layer.self_attn,
                                    lambda: encoder_layer.self_attn(tokens, tokens, tokens)[0]),
      "mlp": lambda: backward(encoder_layer, lambda: mlp(tokens)),
      "adam": adam,
      "tail": lambda t: backward(model.tail[t], lambda: model.tail[t](maps)),
  }


if __name__ == "__main__":
  try:
    main()
  except ModuleNotFoundError as error:  # run from a python without torch: not mtl's environment
    if error.name != "torch":
      raise
    sys.exit(f"error: {error}; run this with a python that has torch (a side environment)")
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
