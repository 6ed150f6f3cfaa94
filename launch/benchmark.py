"""Speed and memory figures: train steps, the input pipeline, the conflict probe, devices.

  python launch/benchmark.py                      # everything, tiny and small sizes
  python launch/benchmark.py --sections=train --sizes=small --repeats=7
  python launch/benchmark.py --sections=train,probe,profile --sizes=small --against=torch \
      --ipt_repo=PATH --torch_python=PATH                # the official PyTorch IPT, same run
  python launch/benchmark.py --sections=train --sizes=paper --precision=bfloat16  # accelerator

Every figure is a median over --repeats timed runs after a warm-up (this machine is noisy);
ratios compare runs made in the same process, and --against=torch steps the official model
(launch/torch_peer.py, in a subprocess) right after each of ours, so both see the same load.
Sections:
  train     one-task steps (IPT schedule), 6 tasks, batch 8: ms/step per task, images/s,
            XLA FLOPs per step and GFLOP/s, compiled peak memory, compile seconds; MFU against
            the device's peak on accelerators; PyTorch's step per task and the ratio
  pipeline  host input pipeline: crops/s delivered (3 and 6 tasks)
  probe     joint step, every task every step: probe / no-probe time ratio, and the naive
            jax.jacrev probe's ratio, with peak memory of each; PyTorch's per-task loop
  devices   the same joint step on 8 fake CPU devices / 1 device, equal global batch
  aggregators  (not in the default) the joint step (3 tasks) with each aggregator and loss
            weighting of mtl.aggregators, relative to plain summed gradients
  profile   (not in the default) each stage of a one-task step alone, forward + backward: head,
            body, one encoder layer / attention / MLP, each task's tail, the optimizer update;
            with --against=torch the official model's same stages, interleaved, and the ratios
"""
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
SECTIONS = ("train", "pipeline", "probe", "devices", "profile", "aggregators")

flags.DEFINE_list("sections", ["train", "pipeline", "probe", "devices"], "What to measure.")
flags.DEFINE_list("sizes", ["tiny", "small"], "Model sizes (mtl.models.ipt.SIZES).")
flags.DEFINE_integer("repeats", 5, "Timed runs per figure (median reported).")
flags.DEFINE_integer("batch_size", 8, "Images per task per step.")
flags.DEFINE_integer("devices", 8, "Fake CPU devices for the devices section.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"],
                  "Compute dtype (parameters and optimizer state stay float32).")
flags.DEFINE_list("tasks", list(SIX_TASKS), "Tasks timed by the train section (of the six).")
flags.DEFINE_string("compile_cache", "", "Persistent XLA compilation cache directory ('': off).")
flags.DEFINE_list("against", [], "Peers timed in the same run, interleaved with ours: torch.")
flags.DEFINE_string("ipt_repo", os.environ.get("IPT_REPO", ""),
                    "Checkout of huawei-noah/Pretrained-IPT (default: $IPT_REPO).")
flags.DEFINE_string("torch_python", os.environ.get("TORCH_PYTHON", sys.executable),
                    "A Python with torch and einops, for --against=torch (default: $TORCH_PYTHON, "
                    "else this one).")
flags.DEFINE_integer("torch_threads", 0, "PyTorch intra-op threads (0: the CPU count).")
FLAGS = flags.FLAGS


def _config(size, tasks, devices=1):
  from mtl import run_defaults
  config = run_defaults.get_config(size)
  config.tasks = tasks
  config.data.batch_size = FLAGS.batch_size
  config.mesh.data = devices
  config.precision = FLAGS.precision
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
  both sides) comes first. Returns (ours, the peer's): {label: median seconds}, NaN for a label
  the peer did not run."""
  import numpy as np
  ours, theirs = {label: [] for label in calls}, {label: [] for label in calls}
  for warm_up in [True] + [False] * repeats:
    for label, (call, request) in calls.items():
      start = time.perf_counter()
      call()
      taken = time.perf_counter() - start
      peer_taken = peer.step(request) if peer and request else None
      if not warm_up:
        ours[label].append(taken)
        if peer_taken is not None:
          theirs[label].append(peer_taken)
  med = lambda d: {k: float(np.median(v)) if v else float("nan") for k, v in d.items()}
  return med(ours), med(theirs)


def _compiled_figures(jitted, state, batch):
  """(XLA FLOPs per call, compiled peak bytes, the compiled executable, compile seconds)."""
  from mtl import compile_cache
  compiled, seconds = compile_cache.compile_timed(jitted, state, batch, log=None)
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


def matmul_gflops(repeats=7):
  """This process's fp32 2048^2 matmul speed: context for how loaded the machine is right now."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  a = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * 2048**3 / float(np.median(times)) / 1e9


# Dense peak FLOP/s per chip by device kind (vendor data sheets), for MFU. Keys are matched as
# substrings of jax's device_kind, lower-cased; the first match wins.
PEAK_TFLOPS = (
    ("h200", {"bfloat16": 989, "float32": 67}),
    ("h100", {"bfloat16": 989, "float32": 67}),
    ("a100", {"bfloat16": 312, "float32": 19.5}),
    ("l4", {"bfloat16": 121, "float32": 30}),
    ("tpu v5 lite", {"bfloat16": 197, "float32": 197}),
    ("tpu v5p", {"bfloat16": 459, "float32": 459}),
    ("tpu v4", {"bfloat16": 275, "float32": 275}),
    ("tpu v6", {"bfloat16": 918, "float32": 918}),
)


def peak_flops(device, precision):
  """The device's dense peak FLOP/s at `precision`, or None (CPU, or a kind not in the table)."""
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  for key, peaks in PEAK_TFLOPS:
    if key in kind:
      return peaks[precision] * 1e12
  return None


def _device_peak_bytes():
  stats = getattr(__import__("jax").devices()[0], "memory_stats", lambda: None)() or {}
  return stats.get("peak_bytes_in_use")


class TorchPeer:
  """The official PyTorch IPT in a subprocess (launch/torch_peer.py), stepped on request so that
  its steps interleave with ours; None-like (`.ok` False) with a one-line reason when it cannot run."""

  def __init__(self, config):
    self.ok, self.reason, self.proc = False, "", None
    repo, python = FLAGS.ipt_repo, FLAGS.torch_python
    if not repo or not os.path.isfile(os.path.join(repo, "model", "ipt.py")):
      self.reason = (f"no official IPT checkout at --ipt_repo={repo!r} (needs model/ipt.py of "
                     "huawei-noah/Pretrained-IPT); PyTorch comparison skipped")
      return
    probe = subprocess.run([python, "-c", "import torch, einops"], capture_output=True, text=True) \
        if python and shutil.which(python) or os.path.isfile(python or "") else None
    if probe is None or probe.returncode:
      self.reason = (f"--torch_python={python!r} cannot import torch and einops; PyTorch "
                     "comparison skipped")
      return
    m = config.model
    self.proc = subprocess.Popen(
        [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py"),
         f"--ipt_repo={repo}", f"--n_feats={m.n_feats}", f"--patch_size={m.patch_size}",
         f"--patch_dim={m.patch_dim}", f"--layers={m.num_encoder_layers}",
         f"--heads={m.num_heads}", f"--batch={config.data.batch_size}",
         f"--threads={FLAGS.torch_threads or os.cpu_count()}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = self.proc.stdout.readline().split()
    if not first or first[0] != "ready":
      self.reason = "the PyTorch peer did not start; see its error above"
      return
    self.ok, self.num_params = True, int(first[1])

  def step(self, request):
    """Seconds of one step (timed inside the peer, so pipe latency is not counted)."""
    self.proc.stdin.write(request + "\n")
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline().split()[1]) / 1e3

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


def _open_peer(config):
  if "torch" not in FLAGS.against:
    return None
  peer = TorchPeer(config)
  if not peer.ok:
    print(f"  PyTorch: {peer.reason}")
    return None
  print(f"  PyTorch peer: official IPT from {FLAGS.ipt_repo}, {peer.num_params} parameters, "
        f"{FLAGS.torch_threads or os.cpu_count()} threads, steps interleaved with ours")
  return peer


def section_train(size):
  import jax
  import numpy as np
  from mtl import run_state, sharding
  names = tuple(FLAGS.tasks)
  config = _config(size, SIX_TASKS)
  run = run_state.build(config)
  device = jax.devices()[0]
  peak = peak_flops(device, config.precision)
  print(f"\n[train] size={size}: {len(names)} of 6 tasks, one task per step, batch "
        f"{config.data.batch_size}, {config.precision}; {os.popen('uptime').read().strip()}")
  peer = _open_peer(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    full = sharding.to_global(_batch(run, config), run.mesh)
    calls = {}
    for name in names:
      flops, mem, compiled, compile_s = _compiled_figures(
          _step(run, config, (name,)), state, {name: full[name]})
      calls[name] = (compiled, {name: full[name]}, f"ipt {SIX_TASKS.index(name)}",
                     (flops, mem), compile_s)
    seconds, torch_seconds = _time_with_peer(
        {k: v[:3] for k, v in calls.items()}, state, peer, FLAGS.repeats, run.mesh)
  if peer:
    peer.close()
  print(f"  {'task':<11} {'ms/step':>8} {'images/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} "
        f"{'peak MB':>8} {'compile s':>9}" + (f" {'MFU':>6}" if peak else "")
        + (f" {'torch ms':>9} {'ratio':>6}" if peer else ""))
  for name in names:
    (flops, mem), compile_s, s = calls[name][3], calls[name][4], seconds[name]
    line = (f"  {name:<11} {s * 1e3:>8.1f} {config.data.batch_size / s:>9.1f} "
            f"{flops / 1e9:>11.2f} {flops / 1e9 / s:>8.1f} {mem / 2**20:>8.1f} {compile_s:>9.1f}")
    if peak:
      line += f" {flops / s / peak:>6.1%}"
    if peer:
      line += f" {torch_seconds[name] * 1e3:>9.1f} {s / torch_seconds[name]:>6.2f}"
    print(line)
  mean = float(np.mean(list(seconds.values())))
  flops = float(np.mean([calls[n][3][0] for n in names]))
  print(f"  mean over tasks: {mean * 1e3:.1f} ms/step ({config.data.batch_size / mean:.1f} "
        f"images/s)" + (f", MFU {flops / mean / peak:.1%} of {peak / 1e12:.0f} TFLOP/s "
                        f"({device.device_kind}, {config.precision})" if peak else ""))
  if peer:
    torch_mean = float(np.mean(list(torch_seconds.values())))
    print(f"  official PyTorch IPT, same run: {torch_mean * 1e3:.1f} ms/step; mtl / PyTorch = "
          f"{mean / torch_mean:.2f}")
  if device.platform != "cpu":
    used = _device_peak_bytes()
    print(f"  device peak memory in use: {used / 2**30:.2f} GiB" if used else
          "  device peak memory: not reported by this backend")
  print(f"  process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


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
  print(f"  {'stage':<30} {'mtl ms':>8}" + (f" {'torch ms':>9} {'ratio':>6}" if peer else ""))
  for label, t in sorted(ours.items(), key=lambda kv: -kv[1]):
    line = f"  {label:<30} {t * 1e3:>8.1f}"
    if peer:
      line += f" {theirs[label] * 1e3:>9.1f} {t / theirs[label]:>6.2f}"
    print(line)
  if peer:
    print("  (PyTorch: the same stage of the official model, stepped right after ours; its "
          "optimizer row is torch.optim.Adam.step, which also applies the update)")


def section_pipeline():
  from mtl import tasks
  from mtl.data import pipeline
  print("\n[pipeline] crops/s delivered by the host pipeline (photos, batch "
        f"{FLAGS.batch_size} per task)")
  for names in (("denoise_30", "sr_x2", "derain"), SIX_TASKS):
    rates = [pipeline.measure_throughput(_images(), tasks.get_all(names), 48, FLAGS.batch_size,
                                         num_steps=30) for _ in range(3)]
    print(f"  {len(names)} tasks: {sorted(rates)[1]:.0f} crops/s (median of 3)")


def section_probe(size):
  import jax
  from mtl import run_state, sharding
  print(f"\n[probe] size={size}: joint step, 6 tasks every step, batch {FLAGS.batch_size} per "
        f"task; {os.popen('uptime').read().strip()}")
  config = _config(size, SIX_TASKS)
  run = run_state.build(config)
  variants = (("no probe", False), ("probe", True), ("naive jacrev", "jacrev"))
  peer = _open_peer(config)
  with jax.set_mesh(run.mesh):
    batch = sharding.to_global(_batch(run, config), run.mesh)
    state = run.init_state()
    compiled = {label: _compiled_figures(_step(run, config, run.model.task_names, probe), state,
                                         batch) for label, probe in variants}
    peaks = {label: c[1] for label, c in compiled.items()}
    # One PyTorch per-task loop per round, beside our probe step.
    calls = {label: (c[2], batch, "pertask" if label == "probe" else None)
             for label, c in compiled.items()}
    seconds, torch_seconds = _time_with_peer(calls, state, peer, FLAGS.repeats, run.mesh)
  if peer:
    peer.close()
  for label in calls:
    print(f"  {label:<13} {seconds[label] * 1e3:>8.1f} ms/step  ratio "
          f"{seconds[label] / seconds['no probe']:5.2f}  peak {peaks[label] / 2**20:8.1f} MB")
  if peer:
    t = torch_seconds["probe"]
    print(f"  official PyTorch IPT per-task loop (6 backward passes, body gradients kept apart, "
          f"cosines), same run: {t * 1e3:.1f} ms/step; mtl probe / PyTorch = "
          f"{seconds['probe'] / t:.2f}")


def section_devices(size):
  import jax
  from mtl import run_state, sharding
  print(f"\n[devices] size={size}: joint step (3 tasks, batch {FLAGS.batch_size} per task), "
        f"{FLAGS.devices} fake CPU devices vs 1 (a correctness-and-overhead figure on 2 cores)")
  times = {}
  for devices in (1, FLAGS.devices):
    config = _config(size, ("denoise_30", "sr_x2", "derain"), devices)
    run = run_state.build(config)
    with jax.set_mesh(run.mesh):
      batch = sharding.to_global(_batch(run, config), run.mesh)
      step = _step(run, config, run.model.task_names)
      times[devices] = _time_with_peer({"step": (step, batch, None)}, run.init_state(), None,
                                       FLAGS.repeats, run.mesh)[0]["step"]
    print(f"  {devices} device(s): {times[devices] * 1e3:.1f} ms/step")
  print(f"  ratio {FLAGS.devices}/1: {times[FLAGS.devices] / times[1]:.2f}")


AGGREGATOR_TASKS = ("denoise_30", "sr_x2", "derain")


def section_aggregators(size):
  """Each config.mtl method's joint step relative to 'sum', in interleaved rounds; every method
  threads its own state (GradVac, DWA, FAMO and the uncertainty weights carry their own)."""
  import jax
  from mtl import aggregators, run_state, sharding
  methods = [("sum", "")] + [(a, "") for a in aggregators.WEIGHTINGS if a != "sum"]
  methods += [("sum", w) for w in aggregators.LOSS_WEIGHTINGS]
  print(f"\n[aggregators] size={size}: joint step, {len(AGGREGATOR_TASKS)} tasks every step, "
        f"batch {FLAGS.batch_size} per task (the aggregators take per-task body gradients on "
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
  bad = set(FLAGS.against) - {"torch"}
  if bad:
    raise ValueError(f"--against={','.join(FLAGS.against)}; valid: torch")
  bad = set(FLAGS.sections) - set(SECTIONS)
  if bad:
    raise ValueError(f"--sections={','.join(FLAGS.sections)}; valid: {','.join(SECTIONS)}")
  bad = set(FLAGS.tasks) - set(SIX_TASKS)
  if bad:
    raise ValueError(f"--tasks={','.join(FLAGS.tasks)}; valid: {','.join(SIX_TASKS)}")
  if FLAGS.compile_cache:
    from mtl import compile_cache
    compile_cache.enable(FLAGS.compile_cache)
  if "devices" in FLAGS.sections:
    jax.config.update("jax_num_cpu_devices", FLAGS.devices)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{len(jax.devices())} device(s): {jax.devices()[0].device_kind}; repeats={FLAGS.repeats}; "
        f"fp32 2048^2 matmul in this process {matmul_gflops():.0f} GFLOP/s (context, not a "
        f"yardstick); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  for section in FLAGS.sections:
    if section == "pipeline":
      section_pipeline()
      continue
    for size in FLAGS.sizes:
      {"train": section_train, "probe": section_probe, "devices": section_devices,
       "profile": section_profile, "aggregators": section_aggregators}[section](size)


if __name__ == "__main__":
  app.run(main)
