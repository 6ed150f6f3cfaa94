"""Speed and memory figures: train steps, the input pipeline, the conflict probe, devices.

  python launch/benchmark.py                      # everything, tiny and small sizes
  python launch/benchmark.py --sections=train --sizes=small --repeats=7

Every figure is a median over --repeats timed runs after a warm-up (this machine is noisy);
ratios compare runs made in the same process. Sections:
  train     one-task steps (IPT schedule), 6 tasks, batch 8: ms/step per task, images/s,
            XLA FLOPs per step and GFLOP/s, compiled peak memory
  pipeline  host input pipeline: crops/s delivered (3 and 6 tasks)
  probe     joint step, every task every step: probe / no-probe time ratio, and the naive
            jax.jacrev probe's ratio, with peak memory of each
  devices   the same joint step on 8 fake CPU devices / 1 device, equal global batch
"""
import resource
import time

import _root  # noqa: F401
from absl import app, flags

flags.DEFINE_list("sections", ["train", "pipeline", "probe", "devices"], "What to measure.")
flags.DEFINE_list("sizes", ["tiny", "small"], "Model sizes (experiments/base.py SIZES).")
flags.DEFINE_integer("repeats", 5, "Timed runs per figure (median reported).")
flags.DEFINE_integer("batch_size", 8, "Images per task per step.")
flags.DEFINE_integer("devices", 8, "Fake CPU devices for the devices section.")
FLAGS = flags.FLAGS

SIX_TASKS = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")


def _config(size, tasks, devices=1):
  from experiments import base
  config = base.get_config(size)
  config.tasks = tasks
  config.data.batch_size = FLAGS.batch_size
  config.mesh.data = devices
  return config


def _batch(run, config, step=0):
  from mtl.data import pipeline
  return pipeline.batch_for_step(_images(), run.model.specs, config.model.patch_size,
                                 config.data.batch_size, config.seed, step)


_IMAGES = []


def _images():
  if not _IMAGES:
    from experiments import base
    from mtl.data import sources
    _IMAGES.append(sources.open_images(base.get_config().data, "train"))
  return _IMAGES[0]


def _time(fn, state, batch, repeats):
  """Median seconds per call; the state is threaded through as in training."""
  import jax
  import numpy as np
  state = jax.block_until_ready(fn(state, batch))[0]  # compile + warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state = jax.block_until_ready(fn(state, batch))[0]
    times.append(time.perf_counter() - start)
  return float(np.median(times)), state


def _time_interleaved(calls, state, repeats):
  """Median seconds per call of each {label: (fn, batch)}, the calls interleaved so that machine
  noise hits every label alike; the state is threaded through as in training."""
  import jax
  import numpy as np
  for fn, batch in calls.values():  # compile + warm-up
    state = jax.block_until_ready(fn(state, batch))[0]
  times = {label: [] for label in calls}
  for _ in range(repeats):
    for label, (fn, batch) in calls.items():
      start = time.perf_counter()
      state = jax.block_until_ready(fn(state, batch))[0]
      times[label].append(time.perf_counter() - start)
  return {label: float(np.median(t)) for label, t in times.items()}


def _compiled_figures(jitted, state, batch):
  compiled = jitted.lower(state, batch).compile()
  cost = compiled.cost_analysis() or {}
  memory = compiled.memory_analysis()
  peak = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
          + memory.output_size_in_bytes - memory.alias_size_in_bytes) if memory else float("nan")
  return float(cost.get("flops", float("nan"))), peak


def _step(run, config, names, probe=False):
  import jax
  from mtl import train
  return jax.jit(train.make_step(run.model, config, run.optimizer, names, probe=probe),
                 donate_argnums=0)


def matmul_gflops(repeats=7):
  """This process's fp32 matmul speed: the yardstick for the machine's load at the moment."""
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


# REFERENCE section 8, official PyTorch IPT at the small size, on a machine with this matmul speed:
REFERENCE_MATMUL_GFLOPS = 460
PYTORCH_MS_PER_STEP = 480          # one task per step
PYTORCH_PROBE_MS_PER_STEP = 3300   # 6 tasks with per-task body gradients + cosines


def _at_this_speed(reference_ms, gflops):
  """A time measured on REFERENCE's machine, scaled to this process's matmul speed."""
  return reference_ms * REFERENCE_MATMUL_GFLOPS / gflops


def section_train(size):
  import jax
  import numpy as np
  from mtl import sharding, train
  config = _config(size, SIX_TASKS)
  run = train.build(config)
  print(f"\n[train] size={size}: 6 tasks, one task per step, batch {config.data.batch_size}")
  print(f"  {'task':<11} {'ms/step':>8} {'images/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} "
        f"{'peak MB':>8}")
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    full = sharding.to_global(_batch(run, config), run.mesh)
    calls = {name: (_step(run, config, (name,)), {name: full[name]}) for name in SIX_TASKS}
    figures = {name: _compiled_figures(fn, state, batch) for name, (fn, batch) in calls.items()}
    seconds = _time_interleaved(calls, state, FLAGS.repeats)
  for name in SIX_TASKS:
    (flops, peak), s = figures[name], seconds[name]
    print(f"  {name:<11} {s * 1e3:>8.1f} {config.data.batch_size / s:>9.1f} "
          f"{flops / 1e9:>11.2f} {flops / 1e9 / s:>8.1f} {peak / 2**20:>8.1f}")
  mean = float(np.mean(list(seconds.values())))
  print(f"  mean over tasks: {mean * 1e3:.1f} ms/step ({config.data.batch_size / mean:.1f} "
        f"images/s)")
  if size == "small":  # the size of the PyTorch figure: n_feats 32, 2+2 layers, 4 heads
    gflops = matmul_gflops()
    pytorch_ms = _at_this_speed(PYTORCH_MS_PER_STEP, gflops)
    print(f"  fp32 2048^2 matmul in this process: {gflops:.0f} GFLOP/s (the machine of REFERENCE "
          f"section 8: ~{REFERENCE_MATMUL_GFLOPS}); official PyTorch IPT: ~{PYTORCH_MS_PER_STEP} "
          f"ms/step there, ~{pytorch_ms:.0f} ms at this matmul speed; ours / that = "
          f"{mean * 1e3 / pytorch_ms:.2f}")
  print(f"  process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


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
  from mtl import sharding, train
  print(f"\n[probe] size={size}: joint step, 6 tasks every step, batch {FLAGS.batch_size} per task")
  config = _config(size, SIX_TASKS)
  run = train.build(config)
  variants = (("no probe", False), ("probe", True), ("naive jacrev", "jacrev"))
  with jax.set_mesh(run.mesh):
    batch = sharding.to_global(_batch(run, config), run.mesh)
    state = run.init_state()
    calls = {label: (_step(run, config, run.model.task_names, probe), batch)
             for label, probe in variants}
    peaks = {label: _compiled_figures(fn, state, batch)[1] for label, (fn, _) in calls.items()}
    seconds = _time_interleaved(calls, state, FLAGS.repeats)
  for label in calls:
    print(f"  {label:<13} {seconds[label] * 1e3:>8.1f} ms/step  ratio "
          f"{seconds[label] / seconds['no probe']:5.2f}  peak {peaks[label] / 2**20:8.1f} MB")
  if size != "small":  # the PyTorch figure is for the small size
    return
  gflops = matmul_gflops()
  print(f"  official PyTorch IPT, 6 tasks with per-task body gradients + cosines: "
        f"~{PYTORCH_PROBE_MS_PER_STEP} ms/step at the small size on the machine of REFERENCE "
        f"section 8 (matmul ~{REFERENCE_MATMUL_GFLOPS} GFLOP/s), "
        f"~{_at_this_speed(PYTORCH_PROBE_MS_PER_STEP, gflops):.0f} ms at this process's "
        f"{gflops:.0f} GFLOP/s")


def section_devices(size):
  import jax
  from mtl import sharding, train
  print(f"\n[devices] size={size}: joint step (3 tasks, batch {FLAGS.batch_size} per task), "
        f"{FLAGS.devices} fake CPU devices vs 1 (a correctness-and-overhead figure on 2 cores)")
  times = {}
  for devices in (1, FLAGS.devices):
    config = _config(size, ("denoise_30", "sr_x2", "derain"), devices)
    run = train.build(config)
    with jax.set_mesh(run.mesh):
      batch = sharding.to_global(_batch(run, config), run.mesh)
      times[devices], _ = _time(_step(run, config, run.model.task_names), run.init_state(),
                                batch, FLAGS.repeats)
    print(f"  {devices} device(s): {times[devices] * 1e3:.1f} ms/step")
  print(f"  ratio {FLAGS.devices}/1: {times[FLAGS.devices] / times[1]:.2f}")


def main(argv):
  del argv
  import jax
  if "devices" in FLAGS.sections:
    jax.config.update("jax_num_cpu_devices", FLAGS.devices)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{len(jax.devices())} device(s): {jax.devices()[0].device_kind}; repeats={FLAGS.repeats}; "
        f"fp32 matmul {matmul_gflops():.0f} GFLOP/s")
  for section in FLAGS.sections:
    if section == "pipeline":
      section_pipeline()
      continue
    for size in FLAGS.sizes:
      {"train": section_train, "probe": section_probe, "devices": section_devices}[section](size)


if __name__ == "__main__":
  app.run(main)
