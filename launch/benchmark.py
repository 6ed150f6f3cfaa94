"""Speed and memory figures: train steps, the input pipeline, the conflict probe, devices,
compile and start-up times.

  python launch/benchmark.py                      # train, pipeline, probe, devices; tiny, small
  python launch/benchmark.py --sections=train --sizes=small --repeats=7
  python launch/benchmark.py --sections=train,probe,profile --sizes=small --against=torch \
      --ipt_repo=PATH --torch_python=PATH                # the official PyTorch IPT, same run
  python launch/benchmark.py --sections=train --sizes=paper --precision=bfloat16 \
      --tasks=sr_x2 --batch_size=8,32,128                # accelerator: a batch sweep with MFU
  python launch/benchmark.py --sections=compile --sizes=paper --batch_size=2   # compile seconds

Every figure is a median over --repeats timed runs after a warm-up (this machine is noisy);
ratios compare runs made in the same process, and --against=torch steps the official model
(launch/torch_peer.py, in a subprocess) right after each of ours, so both see the same load,
in each of --torch_precisions: fp32 (PyTorch's defaults: FP32 matmuls, TF32 convolutions on GPUs),
tf32 (TF32 both: what mtl's float32 runs on GPUs at JAX's default precision), bf16 (autocast); the
ratios are to the faster of fp32 and bf16 (the target's). A peer asked for that cannot run is a
failure: the figures still come, then the benchmark exits 1 naming why.
Sections:
  train     one-task steps (IPT schedule), 6 tasks, at each --batch_size: ms/step per task,
            images/s, model FLOPs (mtl/flops.py, counted from the shapes) and XLA's count
            (which counts the scanned layers once: an undercount),
            compiled and device peak memory, compile seconds; MFU of both counts against the
            device's data-sheet peak, and against this process's measured matmul ceiling;
            PyTorch's step per task and the ratio
  pipeline  host input pipeline: crops/s delivered (3 and 6 tasks), on one thread (= per host
            core) and on all cores, and onto the device (mtl/data/prefetch.py)
  probe     joint step, every task every step, at each --batch_size: probe / plain joint step
            ratio, and the naive jax.jacrev probe's (--probe_variants), peak memory, MFU;
            PyTorch's per-task loop
  compile   (not in the default) seconds to trace and to compile each step function at the
            first --batch_size: the one-task step of each of --tasks (schedule 'one'), the plain
            joint step, the probe step, the initialisation, the evaluation's tile function
  startup   (not in the default) launch/train.py at the size, from the command to its first
            step done, with an empty compilation cache (cold) and again with it filled (warm)
  devices   the same joint step on 8 fake CPU devices / 1 device, equal global batch (CPU runs
            only: refused on an accelerator, and left out of the default sections there)
  aggregators  (not in the default) the joint step (3 tasks) with each aggregator and loss
            weighting of mtl.aggregators, relative to plain summed gradients
  trace     (not in the default) where a step's time goes, op by op (mtl/op_profile.py, from a
            jax.profiler trace of --repeats steps): the share of the wall time in which an op
            runs, op time by kind (matmul, convolution, attention, fusion, ...) and by stage
            (head, body/encoder/attention, ..., optimizer), the longest ops; the one-task step of
            the first of --tasks at each --batch_size, the plain joint and probe steps at the
            first (the trace stays in --trace_dir for TensorBoard's profile plugin or Perfetto).
            For GPUs and TPUs: a CPU's trace times its matmuls' and convolutions' launch only
  profile   (not in the default) each stage of a one-task step alone, forward + backward: head,
            body, one encoder layer / attention / MLP, each task's tail, the optimizer update;
            with --against=torch the official model's same stages, interleaved, and the ratios
"""
import math
import os
import resource
import shutil
import subprocess
import sys
import time

import _root  # noqa: F401
import cli
from absl import app, flags

SIX_TASKS = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
SECTIONS = ("train", "pipeline", "probe", "devices", "profile", "aggregators", "compile",
            "startup", "trace")
PROBE_VARIANTS = ("plain", "probe", "jacrev")

flags.DEFINE_list("sections", ["train", "pipeline", "probe", "devices"], "What to measure.")
flags.DEFINE_list("sizes", ["tiny", "small"], "Model sizes (mtl.models.ipt.SIZES).")
flags.DEFINE_integer("repeats", 5, "Timed runs per figure (median reported).", lower_bound=1)
flags.DEFINE_list("batch_size", ["8"], "Images per task per step; several (8,32,128): the train "
                  "and probe sections sweep them, the others take the first.")
flags.DEFINE_list("probe_variants", list(PROBE_VARIANTS),
                  "Steps the probe section times: plain (joint step), probe, jacrev (naive).")
flags.DEFINE_integer("devices", 8, "Fake CPU devices for the devices section (CPU runs only).",
                     lower_bound=1)
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"],
                  "Compute dtype (parameters and optimizer state stay float32).")
flags.DEFINE_list("tasks", list(SIX_TASKS), "Tasks timed by the train section (of the six).")
flags.DEFINE_string("compile_cache", "", "Persistent XLA compilation cache directory ('' or "
                    "'off': none, so compiles are timed cold).")
flags.DEFINE_list("against", [], "Peers timed in the same run, interleaved with ours: torch.")
flags.DEFINE_string("ipt_repo", os.environ.get("IPT_REPO", ""),
                    "Checkout of huawei-noah/Pretrained-IPT (default: $IPT_REPO).")
flags.DEFINE_string("torch_python", os.environ.get("TORCH_PYTHON", sys.executable),
                    "A Python with torch and einops, for --against=torch (default: $TORCH_PYTHON, "
                    "else this one).")
flags.DEFINE_integer("torch_threads", 0, "PyTorch intra-op threads (0: the CPU count).",
                     lower_bound=0)
flags.DEFINE_enum("torch_device", "auto", ["auto", "cpu", "cuda"],
                  "Where the PyTorch peer runs (auto: cuda when this run's devices are GPUs).")
flags.DEFINE_list("torch_precisions", ["fp32"], "The PyTorch peer's precisions, each stepped after "
                  "ours: fp32 (PyTorch's defaults: FP32 matmuls, TF32 convolutions on GPUs), tf32 "
                  "(TF32 matmuls and convolutions: what mtl's float32 runs on GPUs), bf16 "
                  "(torch.autocast).")
flags.DEFINE_enum("body_calls", "auto", ["auto", "batched", "scanned", "looped"],
                  "config.model.body_calls: how a step runs its several body calls.")
flags.DEFINE_string("trace_dir", "", "Where the trace section keeps its traces ('': a temporary "
                    "folder, removed).")
flags.DEFINE_integer("scan_unroll", 1, "config.model.scan_unroll: encoder/decoder layers per "
                     "scan iteration.", lower_bound=1)
flags.DEFINE_integer("gramian_chunk", 0, "config.conflicts.gramian_chunk: entries per piece of the "
                     "probe's Gramian contractions (0: one product per leaf).", lower_bound=0)
flags.DEFINE_integer("startup_steps", 2, "Steps of the start-up section's training runs.",
                     lower_bound=1)
FLAGS = flags.FLAGS

# Rows of the closing summary table: (what, size, batch, precision, seconds per step (or a
# count), MFU by the model's FLOPs, MFU by XLA's, peak GiB, PyTorch's seconds per step).
SUMMARY = []
FAILED = []  # measurements that did not come about (the benchmark then exits 1)


def _summary_row(row):
  """Keep a row for the closing table, and print it now as `ROW | ... |`: a run cut short by a
  time limit (launch/gpu_check.sh) keeps the rows it finished."""
  SUMMARY.append(row)
  print("ROW " + _markdown_row(row), flush=True)


def _markdown_row(row):
  what, size, batch, precision, value, mfu, mfu_xla, peak, torch_s = row
  fmt = lambda x, f: "-" if x is None or x != x else f.format(x)
  # the peer's (seconds, which): the faster of the compared precisions, named (_peer_cell)
  torch_s, which = torch_s if isinstance(torch_s, tuple) else (torch_s, "")
  which = f" ({which})" if which else ""
  step = what.startswith(("train", "probe"))
  return (f"| {what} | {size} | {batch} | {precision} | "
          f"{fmt(value * 1e3 if step else value, '{:.1f}')} | "
          f"{fmt(batch / value if what.startswith('train') else None, '{:.0f}')} | "
          f"{mfu or '-'} | {mfu_xla or '-'} | {fmt(peak, '{:.2f}')} | "
          f"{fmt(torch_s * 1e3 if torch_s == torch_s else None, '{:.1f}')}{which} |")


SUMMARY_HEADER = ("| what | size | batch | precision | ms/step, s or crops/s | images/s | MFU | "
                  "MFU (XLA) | peak GiB | PyTorch ms (faster) |\n|---|---|---|---|---|---|---|---|---|---|")


def _batch_sizes():
  return sorted(int(b) for b in FLAGS.batch_size)  # ascending: the device's peak grows with them


def _config(size, tasks, devices=1, batch_size=None):
  from mtl import run_defaults
  config = run_defaults.get_config(size)
  config.tasks = tasks
  config.data.batch_size = batch_size or _batch_sizes()[0]
  config.mesh.data = devices
  config.precision = FLAGS.precision
  config.model.body_calls = FLAGS.body_calls
  config.model.scan_unroll = FLAGS.scan_unroll
  config.conflicts.gramian_chunk = FLAGS.gramian_chunk
  return config


def _batch(run, config, step=0):
  from mtl.data import pipeline
  return pipeline.batch_for_step(_images(), run.model.specs, config.model.patch_size,
                                 config.data.batch_size, config.seed, step)


_IMAGES = []


def _images():
  if not _IMAGES:
    from mtl import run_defaults
    from mtl.data import sources
    _IMAGES.append(sources.open_images(run_defaults.get_config().data, "train"))
  return _IMAGES[0]


def _interleaved(calls, repeats, peer=None):
  """Median seconds per call of each {label: (call, peer request or None)}: `call()` runs one of
  ours to completion; the labels take turns, so that machine noise hits all alike, and the
  peer's step for a label, if it has one, runs right after ours. A warm-up round (compilation,
  both sides) comes first. Returns (ours, the peer's): {label: median seconds}, and
  {label: {peer precision: median seconds}} ({} for a label the peer did not run)."""
  import numpy as np
  ours, theirs = {label: [] for label in calls}, {label: [] for label in calls}
  for warm_up in [True] + [False] * repeats:
    for i, (label, (call, request)) in enumerate(calls.items()):
      start = time.perf_counter()
      call()
      taken = time.perf_counter() - start
      peer_taken = peer.step(request) if peer and request else None
      if warm_up and len(calls) > 1:  # compiling them all may take minutes: say how far it is
        print(f"  warm-up {i + 1}/{len(calls)}: {label} {taken:.1f}s", file=sys.stderr,
              flush=True)
      if not warm_up:
        ours[label].append(taken)
        if peer_taken is not None:
          theirs[label].append(peer_taken)
  med = lambda d: {k: float(np.median(v)) if v else float("nan") for k, v in d.items()}
  return med(ours), {label: {p: float(np.median([t[p] for t in taken])) for p in taken[0]}
                     if taken else {} for label, taken in theirs.items()}


def _compile_text(seconds):
  """A compile-seconds cell: 'cached' where the program was loaded from the persistent cache."""
  return "cached" if math.isnan(seconds) else f"{seconds:.1f}"


def _compiled_figures(jitted, state, batch, label=""):
  """(XLA FLOPs per call, compiled peak bytes, the compiled executable, compile seconds: trace
  and compile, nan where --compile_cache held the program and it was loaded instead); with a
  `label`, a line on stderr once it is compiled (a section's compiles may take minutes)."""
  from mtl import compile_cache
  counter = compile_cache.Counter()
  try:
    compiled, seconds = compile_cache.compile_timed(jitted, state, batch, log=None)
  finally:
    counter.close()
  if label:
    print(f"  compiled {label} in {seconds:.1f}s" + (" (from the cache)" if counter.loaded
                                                     and not counter.compiled else ""),
          file=sys.stderr, flush=True)
  if counter.loaded and not counter.compiled:
    seconds = float("nan")
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  memory = compiled.memory_analysis()
  peak = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
          + memory.output_size_in_bytes - memory.alias_size_in_bytes) if memory else float("nan")
  return float(cost.get("flops", float("nan"))), peak, compiled, seconds


def _step(run, config, names, probe=False):
  import jax
  from mtl import step as step_lib
  return jax.jit(step_lib.make_step(run.model, config, run.optimizer, names, run.plan, probe=probe),
                 donate_argnums=0)


def matmul_gflops(repeats=7, precision="float32", side=2048):
  """This process's side^2 matmul speed at `precision`, GFLOP/s: context for how loaded the
  machine is right now, and the ceiling a step's FLOP/s can be held against."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  a = jnp.ones((side, side), jnp.dtype(precision))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * side**3 / float(np.median(times)) / 1e9


_CEILING = {}


def measured_peak(precision):
  """FLOP/s of the largest matmul worth timing here at `precision` (8192^2 on accelerators,
  2048^2 on CPUs), measured once per process: the ceiling a step could reach on this machine."""
  import jax
  if precision not in _CEILING:
    side = 2048 if jax.default_backend() == "cpu" else 8192
    _CEILING[precision] = matmul_gflops(repeats=10, precision=precision, side=side) * 1e9
  return _CEILING[precision]


# Dense peak FLOP/s per chip by device kind, for MFU: (key, {column: TFLOP/s}). Keys are matched
# as substrings of jax's device_kind, lower-cased; the first match wins, so each NVL form comes
# before the name it contains ("NVIDIA H200 NVL" holds "h200"). Columns: bfloat16; tf32, what
# float32 runs as at JAX's default precision (jax_default_matmul_precision unset, and nothing in
# mtl sets it): TF32 tensor-core matmuls and convolutions on NVIDIA GPUs since the A100 (a JAX
# process's fp32 2048^2 matmul ran at 60-81 TFLOP/s on an H200, above its 67 TFLOP/s FP32), one
# bfloat16 pass on TPUs; float32, the non-tensor FP32 peak, only where the default precision is
# raised to 'highest' (no figure for TPUs: MFU n/a). NVIDIA's data sheets give the tensor-core
# figures with 2:4 sparsity: halved here. H100 (SXM / PCIe / NVL): TF32 989 / 756 / 835, BF16
# 1,979 / 1,513 / 1,671 with sparsity, FP32 67 / 51 / 60; H200 (SXM / NVL): TF32 989 / 835,
# BF16 1,979 / 1,671 with sparsity, FP32 67 / 60; A100: TF32 156, BF16 312 dense, FP32 19.5;
# L4: TF32 120, BF16 242 with sparsity, FP32 30.
PEAK_TFLOPS = (
    ("h200 nvl", {"bfloat16": 835, "tf32": 417.5, "float32": 60}),
    ("h200", {"bfloat16": 989, "tf32": 494.7, "float32": 67}),  # SXM ("NVIDIA H200")
    ("h100 pcie", {"bfloat16": 756, "tf32": 378, "float32": 51}),
    ("h100 nvl", {"bfloat16": 835, "tf32": 417.5, "float32": 60}),
    ("h100", {"bfloat16": 989, "tf32": 494.7, "float32": 67}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("a100", {"bfloat16": 312, "tf32": 156, "float32": 19.5}),
    ("l40s", {"bfloat16": 362, "tf32": 183, "float32": 91.6}),
    ("l40", {"bfloat16": 181, "tf32": 90.5, "float32": 90.5}),
    ("l4", {"bfloat16": 121, "tf32": 60, "float32": 30}),  # after l40s, l40: a key is a substring
    ("tpu v5 lite", {"bfloat16": 197, "tf32": 197}),
    ("tpu v5p", {"bfloat16": 459, "tf32": 459}),
    ("tpu v4", {"bfloat16": 275, "tf32": 275}),
    ("tpu v6", {"bfloat16": 918, "tf32": 918}),
)


def _full_float32():
  """Whether float32 matmuls run as true FP32: jax_default_matmul_precision raised to 'highest'
  (unset, JAX's default, they run as TF32 on GPUs and as one bfloat16 pass on TPUs)."""
  import jax
  return str(jax.config.jax_default_matmul_precision).lower() in ("highest", "float32")


def _peak_column(precision):
  """The PEAK_TFLOPS column that `precision`'s matmuls and convolutions run at."""
  return ("float32" if _full_float32() else "tf32") if precision == "float32" else precision


def peak_flops(device, precision):
  """The device's dense peak FLOP/s for what `precision` runs as (float32: TF32 on GPUs at JAX's
  default precision), or None (CPU, or a kind or column not in the table)."""
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  for key, peaks in PEAK_TFLOPS:
    if key in kind:
      peak = peaks.get(_peak_column(precision))
      return peak * 1e12 if peak else None
  return None


def _peak_arithmetic(device, precision):
  """What the peak of peak_flops(device, precision) is the peak of, in words."""
  column = _peak_column(precision)
  if column == "float32":
    return "FP32 (non-tensor; jax_default_matmul_precision=highest: true float32 matmuls)"
  if column == "tf32" and device.platform == "gpu":
    return ("dense TF32 tensor-core (float32 on GPUs is TF32 at JAX's default precision: "
            "matmuls and convolutions; jax_default_matmul_precision is unset)")
  if column == "tf32":
    return "dense bfloat16 (float32 is one bfloat16 pass at JAX's default precision)"
  return f"dense {column}"


def _device_peak_bytes():
  """The device's peak bytes in use so far in this process (None where the backend keeps no
  count, e.g. CPU): with batch sizes in ascending order, the peak of the largest so far."""
  stats = getattr(__import__("jax").devices()[0], "memory_stats", lambda: None)() or {}
  return stats.get("peak_bytes_in_use")


def _mfu_note(device, precision):
  """The line saying what MFU is measured against, and why."""
  spec, ceiling = peak_flops(device, precision), measured_peak(precision)
  side = "2048" if device.platform == "cpu" else "8192"
  matmul = f"{side}^2 {precision} matmul" + (
      " (TF32 at JAX's default precision)" if precision == "float32" and device.platform == "gpu"
      and not _full_float32() else "")
  if spec:
    return (f"  MFU against the data sheet's {_peak_arithmetic(device, precision)} peak, "
            f"{spec / 1e12:.0f} TFLOP/s ({device.device_kind}): the usual denominator (PaLM's "
            f"MFU), so figures compare across code bases; 'of matmul' is against this process's "
            f"measured {matmul}, {ceiling / 1e12:.0f} TFLOP/s, what this chip reaches in practice")
  return (f"  MFU: no data-sheet peak for {device.device_kind} ({device.platform}); 'of matmul' "
          f"is against this process's measured {matmul}, {ceiling / 1e9:.0f} GFLOP/s")


def _mfu_cells(flops, seconds, device, precision):
  spec = peak_flops(device, precision)
  rate = flops / seconds
  return (f"{rate / spec:.1%}" if spec else "n/a"), f"{rate / measured_peak(precision):.1%}"


class TorchPeer:
  """The official PyTorch IPT in a subprocess (launch/torch_peer.py), stepped on request so that
  its steps interleave with ours; None-like (`.ok` False) with a one-line reason when it cannot run."""

  def __init__(self, config):
    self.ok, self.reason, self.proc = False, "", None
    repo, python = FLAGS.ipt_repo, FLAGS.torch_python
    if not repo or not os.path.isfile(os.path.join(repo, "model", "ipt.py")):
      self.reason = (f"no official IPT checkout at --ipt_repo={repo!r} (needs model/ipt.py of "
                     "huawei-noah/Pretrained-IPT)")
      return
    try:
      probe = subprocess.run([python, "-c", "import torch, einops"], capture_output=True,
                             text=True, timeout=120) \
          if python and shutil.which(python) or os.path.isfile(python or "") else None
    except subprocess.TimeoutExpired:
      self.reason = f"--torch_python={python!r} did not import torch and einops within 120 s"
      return
    if probe is None or probe.returncode:
      why = probe.stderr.strip().splitlines()[-1:] if probe else ["no such program"]
      self.reason = (f"--torch_python={python!r} cannot import torch and einops"
                     + (f" ({why[0]})" if why else ""))
      return
    m = config.model
    import jax
    self.device = FLAGS.torch_device
    if self.device == "auto":
      self.device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    self.precisions = tuple(FLAGS.torch_precisions)
    self.proc = subprocess.Popen(
        [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py"),
         f"--ipt_repo={repo}", f"--n_feats={m.n_feats}", f"--patch_size={m.patch_size}",
         f"--patch_dim={m.patch_dim}", f"--layers={m.num_encoder_layers}",
         f"--heads={m.num_heads}", f"--batch={config.data.batch_size}",
         f"--threads={FLAGS.torch_threads or os.cpu_count()}", f"--device={self.device}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = self.proc.stdout.readline().split()
    if not first or first[0] != "ready":
      self.proc.kill()
      self.reason = (f"the PyTorch peer (launch/torch_peer.py) did not start (exit "
                     f"{self.proc.wait()}); see its error above")
      self.proc = None
      return
    self.ok, self.num_params = True, int(first[1])

  def step(self, request):
    """{precision: seconds} of one step in each of the peer's precisions (timed inside the peer,
    so pipe latency is not counted)."""
    taken = {}
    for precision in self.precisions:
      self.proc.stdin.write(f"{request} {precision}\n")
      self.proc.stdin.flush()
      reply = self.proc.stdout.readline().split()
      if not reply or reply[0] != "ms":
        raise RuntimeError(f"the PyTorch peer failed on {request!r} ({precision}); see its error "
                           "above")
      taken[precision] = float(reply[1]) / 1e3
    return taken

  def describe(self):
    return f"{self.device}, {'/'.join(self.precisions)}"

  def arithmetic(self, precision):
    return peer_arithmetic(precision, self.device)

  def close(self):
    if self.proc:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait()


def _step_call(fn, batch, threaded, mesh):
  """A call for _interleaved: one step fn(state, batch) under `mesh` on the state in threaded[0],
  which it replaces (calls sharing one list thread one state through, as in training)."""
  import jax

  def run():
    with jax.set_mesh(mesh):
      threaded[0] = jax.block_until_ready(fn(threaded[0], batch))[0]
  return run


def _time_with_peer(calls, state, peer, repeats, mesh):
  """_interleaved over {label: (fn, batch, peer request or None)}, one state threaded through."""
  threaded = [state]
  return _interleaved({label: (_step_call(fn, batch, threaded, mesh), request)
                       for label, (fn, batch, request) in calls.items()}, repeats, peer)


TORCH_PRECISIONS = ("fp32", "tf32", "bf16")
# The target (README, Speed): mtl's one-task step <= 0.3x the faster of PyTorch fp32 and bf16
# autocast. The ratios compare with the faster of these where the peer ran any of them.
TARGET_PRECISIONS = ("fp32", "bf16")


def peer_arithmetic(precision, device):
  """The arithmetic of a PyTorch peer precision on `device` ('cuda' or 'cpu'), in words: 'fp32'
  is not what mtl's float32 runs (TF32 for matmuls and convolutions at JAX's default precision
  on GPUs); 'tf32' is."""
  if device != "cuda":
    return {"fp32": "FP32", "tf32": "FP32: TF32 is a GPU mode, so the same as fp32 on a CPU",
            "bf16": "bf16 autocast"}[precision]
  return {"fp32": "FP32 matmuls, TF32 convs: PyTorch's defaults",
          "tf32": "TF32 matmuls and convs: allow_tf32 on for cuBLAS and cuDNN, as mtl's float32",
          "bf16": "bf16 autocast, PyTorch's defaults otherwise"}[precision]


def _compared(precisions):
  """The peer precisions a ratio compares with: the target's (fp32, bf16) where any ran."""
  return [p for p in precisions if p in TARGET_PRECISIONS] or list(precisions)


def _faster(theirs):
  """(seconds, precision) of the faster of the compared precisions in {precision: seconds}."""
  return min((theirs[p], p) for p in _compared(theirs))


def _peer_cell(theirs):
  """A summary row's PyTorch cell from {precision: seconds}: (the faster of the compared
  precisions' seconds, 'bf16 of fp32/bf16'); nan where the peer did not run."""
  if not theirs:
    return float("nan")
  seconds, faster = _faster(theirs)
  return seconds, f"{faster} of {'/'.join(_compared(theirs))}"


def _torch_header(peer):
  return "".join(f" {'torch ' + p + ' ms':>14}" for p in peer.precisions) + f" {'ratio':>6}"


def _ratio_note(peer):
  return (f"  ratio: mtl / the faster of PyTorch {' and '.join(_compared(peer.precisions))}, "
          "the same step of the official model right after ours")


def _torch_cells(ours, theirs):
  """The peer's ms per precision and ours / the faster of the compared ones (_ratio_note)."""
  if not theirs:
    return ""
  return "".join(f" {t * 1e3:>14.1f}" for t in theirs.values()) + \
      f" {ours / _faster(theirs)[0]:>6.2f}"


def _open_peer(config):
  """The PyTorch peer for --against=torch (None without it). One that cannot run is a failure:
  the sections go on, and the benchmark exits 1 at its end, naming why."""
  if "torch" not in FLAGS.against:
    return None
  peer = TorchPeer(config)
  if not peer.ok:
    print(f"  PyTorch: {peer.reason}; no PyTorch figures (the benchmark exits 1 at its end)")
    FAILED.append(f"--against=torch: the PyTorch peer did not run: {peer.reason}")
    return None
  print(f"  PyTorch peer: official IPT from {FLAGS.ipt_repo}, {peer.num_params} parameters, "
        f"{peer.device} ({FLAGS.torch_threads or os.cpu_count()} threads), steps interleaved "
        "with ours; precisions: " + "; ".join(f"{p} ({peer.arithmetic(p)})"
                                             for p in peer.precisions))
  return peer


def section_train(size):
  for batch_size in _batch_sizes():
    _train_at(size, batch_size)


def _train_at(size, batch_size):
  import jax
  import numpy as np
  from mtl import flops as flops_lib, run_state, sharding
  names = tuple(FLAGS.tasks)
  config = _config(size, SIX_TASKS, batch_size=batch_size)
  run = run_state.build(config)
  device = jax.devices()[0]
  print(f"\n[train] size={size}: {len(names)} of 6 tasks, one task per step, batch "
        f"{batch_size}, {config.precision}; {os.popen('uptime').read().strip()}")
  peer = _open_peer(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    full = sharding.to_global(_batch(run, config), run.mesh)
    calls = {}
    for name in names:
      flops, mem, compiled, compile_s = _compiled_figures(
          _step(run, config, (name,)), state, {name: full[name]}, f"the {name} step")
      model_flops = flops_lib.train_step(run.model.cfg, (run.model.specs[
          run.model.task_names.index(name)].scale,), batch_size,
          config.loss.contrastive_weight > 0)
      calls[name] = (compiled, {name: full[name]}, f"ipt {SIX_TASKS.index(name)}",
                     (flops, mem, model_flops), compile_s)
    seconds, torch_seconds = _time_with_peer(
        {k: v[:3] for k, v in calls.items()}, state, peer, FLAGS.repeats, run.mesh)
    del state, full
  if peer:
    peer.close()
  used = _device_peak_bytes()
  print(_mfu_note(device, config.precision))
  print(f"  {'task':<11} {'ms/step':>8} {'images/s':>9} {'TFLOP/step':>10} {'XLA TFLOP':>9} "
        f"{'MFU':>6} {'of matmul':>9} {'MFU XLA':>7} {'peak MB':>8} {'compile s':>9}"
        + (_torch_header(peer) if peer else ""))
  for name in names:
    (flops, mem, model_flops), compile_s, s = calls[name][3], calls[name][4], seconds[name]
    mfu, of_matmul = _mfu_cells(model_flops, s, device, config.precision)
    mfu_xla, _ = _mfu_cells(flops, s, device, config.precision)
    line = (f"  {name:<11} {s * 1e3:>8.1f} {batch_size / s:>9.1f} {model_flops / 1e12:>10.3f} "
            f"{flops / 1e12:>9.3f} {mfu:>6} {of_matmul:>9} {mfu_xla:>7} {mem / 2**20:>8.1f} "
            f"{_compile_text(compile_s):>9}")
    if peer:
      line += _torch_cells(s, torch_seconds[name])
    print(line)
  if peer:
    print(_ratio_note(peer))
  mean = float(np.mean(list(seconds.values())))
  model_flops = float(np.mean([calls[n][3][2] for n in names]))
  xla_flops = float(np.mean([calls[n][3][0] for n in names]))
  mfu, of_matmul = _mfu_cells(model_flops, mean, device, config.precision)
  print(f"  mean over tasks: {mean * 1e3:.1f} ms/step ({batch_size / mean:.1f} images/s), "
        f"{model_flops / mean / 1e12:.2f} model TFLOP/s: MFU {mfu} ({of_matmul} of the matmul "
        f"ceiling), by XLA's count {_mfu_cells(xla_flops, mean, device, config.precision)[0]}")
  torch_mean = float("nan")
  if peer:
    by_precision = {p: float(np.mean([torch_seconds[n][p] for n in names]))
                    for p in peer.precisions}
    torch_mean, faster = _faster(by_precision)
    print(f"  official PyTorch IPT ({peer.device}), same run, mean over tasks: " + "; ".join(
        f"{p} ({peer.arithmetic(p)}) {t * 1e3:.1f} ms/step, mtl / it {mean / t:.2f}"
        for p, t in by_precision.items()))
    print(f"  mtl / the faster of PyTorch {' and '.join(_compared(peer.precisions))} ({faster} "
          f"here) = {mean / torch_mean:.2f} (the target: <= 0.3)")
    torch_mean = _peer_cell(by_precision)
  peak_gib = used / 2**30 if used else max(calls[n][3][1] for n in names) / 2**30
  print(f"  device peak memory in use so far: {used / 2**30:.2f} GiB" if used else
        "  device peak memory: not reported by this backend (compiled peak per step above)")
  print(f"  process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
  _summary_row(("train: one-task step", size, batch_size, config.precision, mean,
                  mfu, _mfu_cells(xla_flops, mean, device, config.precision)[0], peak_gib,
                  torch_mean))


def section_profile(size):
  """Where a one-task step's time goes: each stage forward + backward alone, jitted, interleaved."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from mtl import run_state
  from mtl.models import ipt
  config = _config(size, SIX_TASKS)
  run = run_state.build(config)
  model, b = run.model, config.data.batch_size
  side, f = config.model.patch_size, config.model.n_feats
  params = model.init(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (b, side, side, 3)) * 255
  feats = jnp.zeros((b, side, side, f)) + 1.0
  grad = lambda fn: jax.jit(jax.grad(lambda p, *a: jnp.sum(fn(p, *a)).astype(jnp.float32)))
  cfg = model.cfg
  dtype = jnp.dtype(cfg.compute_dtype)
  tokens = jax.random.normal(jax.random.key(2), (b * cfg.num_tokens, cfg.token_dim), dtype)
  enc_graph, enc_state = nnx.split(ipt.EncoderLayer(cfg, nnx.Rngs(0)))
  att_graph, att_state = nnx.split(ipt.Attention(cfg.token_dim, cfg.num_heads, dtype,
                                                 nnx.Rngs(0)))
  mlp_graph, mlp_state = nnx.split(ipt.MLP(cfg.token_dim, cfg.token_dim * cfg.mlp_ratio, dtype,
                                           nnx.Rngs(0)))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  opt_state = run.optimizer.init(params)
  # label: (jitted fn, its arguments, the PyTorch peer's request for the same stage)
  stages = {
      "head (3x3 + 4 5x5 convs)": (grad(model.head), (params["heads"]["sr_x2"], images),
                                   "stage head"),
      "body (all layers)": (grad(lambda p, x, q: model.body(p, x, q)[0]),
                            (params["body"], feats, params["queries"]["sr_x2"]), "stage body"),
      "  one encoder layer": (grad(lambda s, x: nnx.merge(enc_graph, s)(x, b)),
                              (enc_state, tokens), "stage encoder_layer"),
      "  one attention": (grad(lambda s, x: nnx.merge(att_graph, s)(x, x, x, b)),
                          (att_state, tokens), "stage attention"),
      "  one MLP": (grad(lambda s, x: nnx.merge(mlp_graph, s)(x)), (mlp_state, tokens),
                    "stage mlp"),
      "optimizer update (all tasks)": (jax.jit(lambda g, o, p: run.optimizer.update(g, o, p)[0]),
                                       (grads, opt_state, params), "stage adam"),
  }
  for index, name in enumerate(model.task_names):
    scale = model.specs[index].scale
    stages[f"tail {name} (x{scale})"] = (grad(lambda p, x, s=scale: model.tail(p, s, x)),
                                         (params["tails"][name], feats), f"stage tail:{index}")
  peer = _open_peer(config)
  run_stage = lambda fn, args: lambda: jax.block_until_ready(fn(*args))
  ours, theirs = _interleaved({label: (run_stage(fn, args), request)
                               for label, (fn, args, request) in stages.items()},
                              FLAGS.repeats, peer)
  if peer:
    peer.close()
  print(f"\n[profile] size={size}: stages of a one-task step alone, forward + backward, batch {b}, "
        f"{config.precision}; {os.popen('uptime').read().strip()}")
  print(f"  {'stage':<30} {'mtl ms':>8}" + (_torch_header(peer) if peer else ""))
  for label, t in sorted(ours.items(), key=lambda kv: -kv[1]):
    print(f"  {label:<30} {t * 1e3:>8.1f}" + (_torch_cells(t, theirs[label]) if peer else ""))
  if peer:
    print(_ratio_note(peer))
    print("  (PyTorch: the same stage of the official model, stepped right after ours; its "
          "optimizer row is torch.optim.Adam.step, which also applies the update)")


def section_pipeline():
  import jax
  from mtl import run_state, tasks
  from mtl.data import pipeline, prefetch
  batch_size, cores = _batch_sizes()[0], os.cpu_count() or 1
  threads = pipeline.default_threads()
  print(f"\n[pipeline] crops/s delivered by the host pipeline (photos, batch {batch_size} per "
        f"task; {cores} host cores, {threads} threads by default), median of 3")
  mesh = run_state.build(_config("tiny", SIX_TASKS, batch_size=batch_size)).mesh
  print(f"  {'tasks':<6} {'1 thread':>9} {f'{threads} threads':>11} {'per core':>9} "
        f"{'onto ' + jax.devices()[0].platform:>10}")
  for names in (("denoise_30", "sr_x2", "derain"), SIX_TASKS):
    specs = tasks.get_all(names)
    rate = lambda **kw: sorted(pipeline.measure_throughput(
        _images(), specs, 48, batch_size, num_steps=30, **kw) for _ in range(3))[1]
    one, every = rate(num_threads=1), rate()
    device = sorted(_device_throughput(specs, batch_size, mesh, prefetch) for _ in range(3))[1]
    print(f"  {len(names):<6} {one:>9.0f} {every:>11.0f} {every / min(threads, cores):>9.0f} "
          f"{device:>10.0f}")
    _summary_row((f"pipeline: crops/s per host core ({len(names)} tasks)", "-", batch_size,
                    "uint8", every / min(threads, cores), "", "", float("nan"), float("nan")))
  print("  (per core: all threads' rate over the cores they use; onto the device: the same "
        "batches copied by DevicePrefetch with the batch sharding, as the trainer feeds them)")


def _device_throughput(specs, batch_size, mesh, prefetch, num_steps=30, warmup_steps=5):
  """Crops/s of train_batches through DevicePrefetch onto `mesh`, each batch ready on device."""
  import jax
  from mtl.data import pipeline
  source = pipeline.train_batches(_images(), specs, 48, batch_size, 0,
                                  num_steps=warmup_steps + num_steps)
  with prefetch.DevicePrefetch(source, mesh) as batches:
    for _ in range(warmup_steps):
      next(batches)
    count, start = 0, time.perf_counter()
    for _, batch in batches:
      jax.block_until_ready(batch)
      count += sum(v.shape[0] for k, v in batch.items() if ":" not in k)
  return count / (time.perf_counter() - start)


def section_probe(size):
  for batch_size in _batch_sizes():
    _probe_at(size, batch_size)


def _probe_at(size, batch_size):
  import jax
  from mtl import flops as flops_lib, run_state, sharding
  print(f"\n[probe] size={size}: joint step, 6 tasks every step, batch {batch_size} per "
        f"task; {os.popen('uptime').read().strip()}")
  config = _config(size, SIX_TASKS, batch_size=batch_size)
  run = run_state.build(config)
  device = jax.devices()[0]
  wanted = set(FLAGS.probe_variants)
  variants = [(label, probe) for label, key, probe in (
      ("no probe", "plain", False), ("probe", "probe", True), ("naive jacrev", "jacrev", "jacrev"))
              if key in wanted]
  peer = _open_peer(config)
  with jax.set_mesh(run.mesh):
    batch = sharding.to_global(_batch(run, config), run.mesh)
    state = run.init_state()
    compiled = {label: _compiled_figures(_step(run, config, run.model.task_names, probe), state,
                                         batch, f"the {label} step") for label, probe in variants}
    peaks = {label: c[1] for label, c in compiled.items()}
    # One PyTorch per-task loop per round, beside our probe step.
    calls = {label: (c[2], batch, "pertask" if label == "probe" else None)
             for label, c in compiled.items()}
    seconds, torch_seconds = _time_with_peer(calls, state, peer, FLAGS.repeats, run.mesh)
    del state, batch
  if peer:
    peer.close()
  model_flops = flops_lib.train_step(run.model.cfg, [s.scale for s in run.model.specs],
                                     batch_size, config.loss.contrastive_weight > 0)
  print(_mfu_note(device, config.precision))
  base = seconds.get("no probe")
  for label in calls:
    mfu, of_matmul = _mfu_cells(model_flops, seconds[label], device, config.precision)
    ratio = f"ratio {seconds[label] / base:5.2f}  " if base else ""
    print(f"  {label:<13} {seconds[label] * 1e3:>8.1f} ms/step  {ratio}MFU {mfu:>6} "
          f"({of_matmul} of matmul)  compiled peak {peaks[label] / 2**20:8.1f} MB  compile "
          f"{_compile_text(compiled[label][3])} s")
    # Each row its own variant's compiled peak: the device's peak in use is the process's, the
    # heaviest variant's for every row once all have run (printed once, below).
    _summary_row((_probe_label(label, seconds[label], base), size, batch_size,
                    config.precision, seconds[label], mfu,
                    _mfu_cells(compiled[label][0], seconds[label], device, config.precision)[0],
                    peaks[label] / 2**30,
                    _peer_cell(torch_seconds.get(label))))
  used = _device_peak_bytes()
  print(f"  device peak memory in use so far in this process (all variants above): "
        f"{used / 2**30:.2f} GiB" if used else "  device peak memory: not reported by this "
        "backend (compiled peak per variant above)")
  if peer and torch_seconds.get("probe"):
    faster_s, faster = _faster(torch_seconds["probe"])
    print("  official PyTorch IPT per-task loop (6 backward passes, body gradients kept apart, "
          "cosines), same run: " + "; ".join(f"{p} ({peer.arithmetic(p)}) {t * 1e3:.1f} ms/step"
                                             for p, t in torch_seconds["probe"].items())
          + f"; mtl probe / the faster of PyTorch {' and '.join(_compared(peer.precisions))} "
          f"({faster} here) = {seconds['probe'] / faster_s:.2f}")


def _probe_label(label, seconds, plain):
  """A probe row's label: 'probe: <label>', with its time's ratio to the plain joint step's."""
  ratio = f" ({seconds / plain:.2f}x plain)" if plain and label != "no probe" else ""
  return f"probe: {label}{ratio}"


def section_trace(size):
  """Where each step's time goes, op by op: mtl.op_profile over a trace of --repeats steps. Each
  step's untraced time is a row of its own, as the train and probe sections time it: the
  baseline of a run that changes a setting for the same steps (launch/gpu_check.sh's parts)."""
  import tempfile
  import jax
  from mtl import flops as flops_lib, op_profile, run_state, sharding
  log_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="mtl_trace_")
  try:
    for batch_size in _batch_sizes():
      config = _config(size, SIX_TASKS, batch_size=batch_size)
      run = run_state.build(config)
      steps = [(f"one-task step ({FLAGS.tasks[0]})", (FLAGS.tasks[0],), False)]
      if batch_size == _batch_sizes()[0]:
        steps += [("plain joint step", run.model.task_names, False),
                  ("probe step", run.model.task_names, True)]
      with jax.set_mesh(run.mesh):
        full = sharding.to_global(_batch(run, config), run.mesh)
        threaded = [run.init_state()]
        device, untraced_plain = jax.devices()[0], None
        for label, names, probe in steps:
          batch = {n: full[n] for n in names}
          xla_flops, peak, compiled, _ = _compiled_figures(_step(run, config, names, probe),
                                                           threaded[0], batch, f"the {label}")
          call = _step_call(compiled, batch, threaded, run.mesh)
          untraced = _interleaved({label: (call, None)}, FLAGS.repeats)[0][label]
          model_flops = flops_lib.train_step(run.model.cfg, [run.model.specs[
              run.model.task_names.index(n)].scale for n in names], batch_size,
              config.loss.contrastive_weight > 0)
          if len(names) == 1:
            what = "train: one-task step"
          else:  # the plain joint step, then the probe step
            untraced_plain = untraced_plain if probe else untraced
            what = _probe_label("probe" if probe else "no probe", untraced, untraced_plain)
          _summary_row((f"{what} [trace part, untraced]", size, batch_size, config.precision,
                        untraced, _mfu_cells(model_flops, untraced, device, config.precision)[0],
                        _mfu_cells(xla_flops, untraced, device, config.precision)[0],
                        peak / 2**30, float("nan")))
          events, wall = op_profile.trace_calls(call, FLAGS.repeats, log_dir)
          profile = op_profile.summarize(events, compiled.as_text(), FLAGS.repeats, wall)
          print(f"\n[trace] size={size}: {label}, batch {batch_size} per task, "
                f"{config.precision}, {FLAGS.repeats} steps traced; untraced "
                f"{untraced * 1e3:.2f} ms/step (median; the profiler adds its own overhead)")
          print("\n".join(profile.lines()))
          busy = 100 * profile.busy_ms / profile.wall_ms if profile.on_device else float("nan")
          _summary_row((f"trace: {label}, % of the wall time an op runs", size, batch_size,
                        config.precision, busy, "", "", float("nan"), float("nan")))
        del threaded, full
    if FLAGS.trace_dir:
      print(f"  traces: {log_dir} (tensorboard --logdir, or ui.perfetto.dev: perfetto_trace.json.gz)")
  finally:
    if not FLAGS.trace_dir:
      shutil.rmtree(log_dir, ignore_errors=True)


def section_compile(size):
  """Seconds to trace (jit's lower) and to compile each step function and the init, from
  abstract arguments (nothing is initialised), without the persistent compilation cache."""
  import jax
  import jax.numpy as jnp
  from mtl import run_state, sharding
  batch_size = _batch_sizes()[0]
  config = _config(size, SIX_TASKS, batch_size=batch_size)
  run = run_state.build(config)
  cache_was_on = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  print(f"\n[compile] size={size}: batch {batch_size} per task, {config.precision}, "
        f"{len(jax.devices())} {jax.devices()[0].platform} device(s), persistent cache off; "
        f"{os.popen('uptime').read().strip()}")
  abstract_batch = lambda specs: {s.name: jax.ShapeDtypeStruct(
      (batch_size,) + (s.hr_crop(config.model.patch_size),) * 2 + (3,), jnp.uint8,
      sharding=sharding.batch_sharding(run.mesh)) for s in specs}
  functions = [(f"one-task step {s.name} (schedule one)", _step(run, config, (s.name,)),
                (run.abstract_state, abstract_batch([s]))) for s in run.model.specs
               if s.name in FLAGS.tasks]
  functions.append(("plain joint step (schedule all)", _step(run, config, run.model.task_names),
                    (run.abstract_state, abstract_batch(run.model.specs))))
  functions.append(("probe step (schedule all)",
                    _step(run, config, run.model.task_names, probe=True),
                    (run.abstract_state, abstract_batch(run.model.specs))))
  functions.append(("init (the fresh state)", run.init_function(),
                    (jax.ShapeDtypeStruct((), jnp.uint32),)))
  tile = config.eval.tile_batch
  params = run.abstract_state.params
  images = jax.ShapeDtypeStruct((tile, config.model.patch_size, config.model.patch_size, 3),
                                jnp.float32)
  functions.append((f"eval tile function ({tile} tiles, sr_x4)",
                    jax.jit(run.model.apply, static_argnums=1), (params, "sr_x4", images)))
  print(f"  {'function':<44} {'trace s':>8} {'compile s':>9}")
  mode = "" if FLAGS.body_calls == "auto" else f", body calls {FLAGS.body_calls}"
  one_task = []
  with jax.set_mesh(run.mesh):
    for label, jitted, args in functions:
      start = time.perf_counter()
      lowered = jitted.lower(*args)
      traced = time.perf_counter() - start
      lowered.compile()
      compiled = time.perf_counter() - start - traced
      print(f"  {label:<44} {traced:>8.1f} {compiled:>9.1f}", flush=True)
      if label.startswith("one-task"):
        one_task.append(traced + compiled)
      else:
        _summary_row((f"compile s: {label.split(' (')[0]}{mode}", size, batch_size, config.precision,
                        traced + compiled, "", "", float("nan"), float("nan")))
  _summary_row((f"compile s: one-task step (max of the tasks){mode}", size, batch_size,
                  config.precision, max(one_task), "", "", float("nan"), float("nan")))
  print(f"  one-task steps: {len(one_task)} programs, {sum(one_task):.1f} s in all, at most "
        f"{max(one_task):.1f} s each")
  jax.config.update("jax_enable_compilation_cache", cache_was_on)


def startup_command(size, batch_size, workdir, cache):
  """launch/train.py with IPT's config at `size` on the embedded photographs (its ImageNet
  folder left out), one tiny evaluation, FLAGS.startup_steps steps."""
  command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"),
             "--config=experiments/ipt_paper.py", f"--workdir={workdir}",
             f"--compile_cache={cache}", "--config.data.source=photos", "--config.data.folder=",
             "--config.eval.sets=photos", "--config.eval.max_images=1",
             "--config.eval.max_side=48", f"--config.data.batch_size={batch_size}",
             f"--config.total_steps={FLAGS.startup_steps}", "--config.log_every=1",
             f"--config.checkpoint_every={FLAGS.startup_steps}",
             f"--config.precision={FLAGS.precision}"]
  if size != "paper":
    from mtl.models import ipt
    command += [f"--config.model.{k}={v}" for k, v in ipt.SIZES[size].items()]
  return command


def section_startup(size):
  """launch/train.py at `size` (IPT's config with the embedded photographs): seconds from the
  command to its first step done (the first progress line), with an empty compilation cache
  and again with the one the first run filled; milestones from the output's arrival times. The
  run is stopped there. On a GPU, run it with XLA_PYTHON_CLIENT_PREALLOCATE=false (this process
  holds the device too)."""
  import tempfile
  batch_size = _batch_sizes()[0]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  print(f"\n[startup] size={size}: launch/train.py, IPT's config (6 tasks, schedule one) on the "
        f"embedded photographs, batch {batch_size}, {FLAGS.precision}; "
        f"{os.popen('uptime').read().strip()}")
  base = tempfile.mkdtemp(prefix="mtl-startup-")
  milestones = (("banner (built, state initialised)", "run: "),
                ("first step compiled", "compiled the "),
                ("first step done", "step 1/"))
  print(f"  {'run':<6} " + " ".join(f"{m[0]:>34}" for m in milestones) + f" {'':>5}")
  try:
    for kind in ("cold", "warm"):
      command = startup_command(size, batch_size, f"{base}/{kind}", f"{base}/cache")
      seen, start = {}, time.perf_counter()
      proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
      lines = []
      for line in proc.stdout:
        lines.append(line)
        for label, prefix in milestones:
          if label not in seen and line.startswith(prefix):
            seen[label] = time.perf_counter() - start
        if len(seen) == len(milestones):  # what comes after (evaluation) is not start-up
          proc.kill()
          break
      rc = proc.wait()
      done = len(seen) == len(milestones)
      print(f"  {kind:<6} " + " ".join(f"{seen.get(m[0], float('nan')):>33.1f}s"
                                       for m in milestones) + f" {'ok' if done else rc:>5}")
      if not done:
        print("  " + "  ".join(lines[-5:]))
        FAILED.append(f"startup ({kind}): launch/train.py stopped before its first step")
      _summary_row((f"start-up s: command to first step ({kind} cache)", size, batch_size,
                      FLAGS.precision, seen.get("first step done", float("nan")), "", "",
                      float("nan"), float("nan")))
  finally:
    shutil.rmtree(base, ignore_errors=True)


def print_summary():
  """One markdown table of the run's headline figures (for README's Speed section)."""
  if not SUMMARY:
    return
  import jax
  device = jax.devices()[0]
  print(f"\n[summary] {device.device_kind} ({len(jax.devices())} {device.platform} device(s)), "
        f"jax {jax.__version__}; command: python3 launch/benchmark.py {' '.join(sys.argv[1:])}")
  print(SUMMARY_HEADER)
  for row in SUMMARY:
    print(_markdown_row(row))


def section_devices(size):
  import jax
  from mtl import op_profile, run_state, sharding
  n = FLAGS.devices
  print(f"\n[devices] size={size}: joint step (3 tasks, batch {_batch_sizes()[0]} per task), "
        f"{n} fake CPU devices vs 1 (a correctness-and-overhead figure on 2 cores); MB a "
        "device receives per step from the compiled program's collectives")
  times = {}
  for label, mesh in (("1 device", (1, 1)), (f"data={n}", (n, 1)), (f"fsdp={n}", (1, n))):
    config = _config(size, ("denoise_30", "sr_x2", "derain"))
    config.mesh.data, config.mesh.fsdp = mesh
    run = run_state.build(config)
    with jax.set_mesh(run.mesh):
      batch = sharding.to_global(_batch(run, config), run.mesh)
      _, peak, compiled, _ = _compiled_figures(_step(run, config, run.model.task_names),
                                               run.abstract_state, batch, f"the {label} step")
      moved = op_profile.collective_bytes(compiled.as_text())
      kinds = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(moved.items())) or "none"
      need, free = peak * run.mesh.size, _host_memory_available()
      if need > free:  # the fake devices share the host's memory: running would be killed
        print(f"  {label:<9} not timed: {run.mesh.size} device(s) x {peak / 1e9:.1f} GB compiled "
              f"peak > {free / 1e9:.1f} GB of host memory available   MB moved: {kinds}")
        continue
      times[label] = _time_with_peer({"step": (compiled, batch, None)}, run.init_state(), None,
                                     FLAGS.repeats, run.mesh)[0]["step"]
    ratio = (f"{times[label] / times['1 device']:5.2f}x" if "1 device" in times else "")
    print(f"  {label:<9} {times[label] * 1e3:8.1f} ms/step  {ratio}   MB moved: {kinds}")


def _host_memory_available():
  """Bytes of memory the host can give now (Linux's MemAvailable; else its physical memory)."""
  try:
    with open("/proc/meminfo") as f:
      return next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
  except (OSError, StopIteration):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


AGGREGATOR_TASKS = ("denoise_30", "sr_x2", "derain")


def section_aggregators(size):
  """Each config.mtl method's joint step relative to 'sum', in interleaved rounds; every method
  threads its own state (GradVac, DWA, FAMO and the uncertainty weights carry their own)."""
  import jax
  from mtl import aggregators, run_state, sharding
  methods = [("sum", "")] + [(a, "") for a in aggregators.WEIGHTINGS if a != "sum"]
  methods += [("sum", w) for w in aggregators.LOSS_WEIGHTINGS]
  print(f"\n[aggregators] size={size}: joint step, {len(AGGREGATOR_TASKS)} tasks every step, "
        f"batch {_batch_sizes()[0]} per task (the aggregators take per-task body gradients on "
        "every step; the loss weightings sum them); "
        f"{os.popen('uptime').read().strip()}")
  calls = {}
  for aggregator, weighting in methods:
    config = _config(size, AGGREGATOR_TASKS)
    config.mtl.aggregator, config.mtl.loss_weighting = aggregator, weighting
    run = run_state.build(config)
    with jax.set_mesh(run.mesh):
      batch = sharding.to_global(_batch(run, config), run.mesh)
      step = _step(run, config, run.model.task_names)  # each method threads its own state
      calls[weighting or aggregator] = (_step_call(step, batch, [run.init_state()], run.mesh),
                                        None)
  times, _ = _interleaved(calls, FLAGS.repeats)
  print("  method        ms/step  relative to sum")
  for label, t in times.items():
    print(f"  {label:<12} {t * 1e3:>8.1f}  {t / times['sum']:5.2f}")



@cli.absl_main
def main():
  import jax
  from mtl import files
  from mtl.models import ipt
  bad = set(FLAGS.against) - {"torch"}
  if bad:
    raise ValueError(f"--against={','.join(FLAGS.against)}; valid: torch")
  bad = set(FLAGS.sections) - set(SECTIONS)
  if bad or not FLAGS.sections:
    raise ValueError(f"--sections={','.join(FLAGS.sections)}; valid: one or more of "
                     f"{','.join(SECTIONS)}")
  files.check_not_a_file(FLAGS.trace_dir, "--trace_dir", "a folder for the traces")
  bad = set(FLAGS.sizes) - set(ipt.SIZES)
  if bad or not FLAGS.sizes:
    raise ValueError(f"--sizes={','.join(FLAGS.sizes)}; valid: {','.join(ipt.SIZES)}")
  bad = set(FLAGS.tasks) - set(SIX_TASKS)
  if bad or not FLAGS.tasks:
    raise ValueError(f"--tasks={','.join(FLAGS.tasks)}; valid: one or more of "
                     f"{','.join(SIX_TASKS)}")
  if not FLAGS.batch_size or not all(b.isdigit() and int(b) > 0 for b in FLAGS.batch_size):
    raise ValueError(f"--batch_size={','.join(FLAGS.batch_size)}; valid: positive integers, "
                     "comma-separated (8,32,128)")
  if "devices" in FLAGS.sections and _batch_sizes()[0] % FLAGS.devices:
    raise ValueError(f"--batch_size={_batch_sizes()[0]} with --sections=devices: that section "
                     f"splits each task's batch over --devices={FLAGS.devices}; give a multiple "
                     "of it, fewer devices, or leave the section out")
  bad = set(FLAGS.probe_variants) - set(PROBE_VARIANTS)
  if bad or not FLAGS.probe_variants:
    raise ValueError(f"--probe_variants={','.join(FLAGS.probe_variants)}; valid: one or more of "
                     f"{','.join(PROBE_VARIANTS)}")
  bad = set(FLAGS.torch_precisions) - set(TORCH_PRECISIONS)
  if bad or not FLAGS.torch_precisions:
    raise ValueError(f"--torch_precisions={','.join(FLAGS.torch_precisions)}; valid: "
                     f"{', '.join(TORCH_PRECISIONS)}")
  if FLAGS.compile_cache not in ("", "off"):  # 'off' as launch/train.py's, which errors name
    from mtl import compile_cache
    compile_cache.enable(FLAGS.compile_cache)
  sections = list(FLAGS.sections)
  if "devices" in sections:
    jax.config.update("jax_num_cpu_devices", FLAGS.devices)  # before the backends start
    if jax.default_backend() != "cpu":
      # jax.devices() are the accelerators here; a CPU mesh in this process would not give the
      # CPU figure either: the model picks its GPU forms by backend (cuDNN attention, batched
      # body calls).
      why = (f"the devices section compares {FLAGS.devices} fake CPU devices with 1 in a CPU-only "
             f"process; this one's backend is {jax.default_backend()}")
      if FLAGS["sections"].present:
        raise ValueError(f"--sections={','.join(FLAGS.sections)}: {why}; leave devices out, or "
                         "run it on a CPU (JAX_PLATFORMS=cpu)")
      sections.remove("devices")
      print(f"devices section left out: {why}")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{len(jax.devices())} device(s): {jax.devices()[0].device_kind}; repeats={FLAGS.repeats}; "
        f"float32 2048^2 matmul in this process (TF32 on GPUs at JAX's default precision) "
        f"{matmul_gflops():.0f} GFLOP/s (context, not a yardstick); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  for section in sections:
    if section == "pipeline":
      section_pipeline()
      continue
    for size in FLAGS.sizes:
      {"train": section_train, "probe": section_probe, "devices": section_devices,
       "profile": section_profile, "aggregators": section_aggregators,
       "compile": section_compile, "startup": section_startup,
       "trace": section_trace}[section](size)
  print_summary()
  if FAILED:  # the figures above lack these: exit 1, so that a script running it sees it
    cli.fail("; ".join(dict.fromkeys(FAILED)))  # each once (the peer fails alike per section)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
