"""The loop of one run (`train_and_evaluate`): trains, checkpoints, probes conflicts, logs and
evaluates the run that `mtl.run_state.prepare` built and checked (its config: mtl.run_config).

Nothing is written before `prepare` passes; a run holds its workdir's lock (mtl.run_folder) while
it works. The step itself is mtl.step; the optimizer mtl.optim.
"""
import errno
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mtl import (aggregators, checkpoints, conflicts, distributed, files, flops, run_defaults,
                 run_folder, xla_options)
from mtl.data import pipeline, prefetch
from mtl.models import ipt
from mtl.progress import MetricsLog, hparams_of
from mtl.run_config import absolute_paths, normalize
from mtl.run_state import finetune_params, prepare
from mtl.step import data_step, make_step, step_args


# ----------------------------------------------------------------------------- the loop


class _Preemption:
  """SIGTERM (preemption notice), Ctrl-C or SIGHUP (its terminal closed) -> checkpoint at the
  next step boundary, then exit.

  With several processes all must stop after the same step (saving is collective), so the
  notice goes through jax's preemption sync, whose SIGTERM handler jax.distributed installs:
  a SIGTERM to any process stops every process after one agreed step (launch/local.py turns
  Ctrl-C into SIGTERM); a Ctrl-C to one of them interrupts it at once (KeyboardInterrupt, raised
  again at the step's end should anything have dropped it). One process: SIGTERM and the first
  Ctrl-C ask to stop; a second Ctrl-C interrupts at once (KeyboardInterrupt; the last checkpoint
  is kept). A stop asked for after the last step skips the final evaluation once the last
  checkpoint is saved (a rerun evaluates); one asked for during the final evaluation lets it
  finish; one during the start-up (the workdir taken, a checkpoint restored, a missed evaluation
  made up) stops before the first step.
  """

  def __init__(self):
    self.requested = False
    self.interrupted = False  # a Ctrl-C of a multi-process run: KeyboardInterrupt
    self.unsaid = None  # the line of a signal not printed yet
    self.synced = jax.process_count() > 1
    self.stage = "start-up"  # where a stop takes effect; None: the final evaluation
    self.finishing = "the final evaluation finishes first"  # what a stop waits for there

  def __enter__(self):
    self._previous = {}
    if self.synced:  # SIGTERM is jax's (a Python handler would replace it); Ctrl-C stops at once
      if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:  # a shell's background job ignores it
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        self._unraisable, sys.unraisablehook = sys.unraisablehook, self._dropped
      return self
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
      if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
        continue  # started under nohup: a closed terminal is to change nothing
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _dropped(self, unraisable):
    """sys.unraisablehook: the interrupt a callback dropped (jax's gc callback, a finalizer) is
    not printed as a traceback; `check` raises it again."""
    if not (self.interrupted and issubclass(unraisable.exc_type, KeyboardInterrupt)):
      self._unraisable(unraisable)

  def _interrupt(self, signum, frame):
    # remembered: code that runs Python's signal check and drops what it raises (a finalizer,
    # a native callback) would lose the interrupt; `check` raises it again at the step's end
    self.interrupted = True
    raise KeyboardInterrupt

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    if self.stage is None:
      what = self.finishing
    elif self.stage == "start-up":
      what = "stopping before the first step (nothing new to save)"
    elif self.stage == "the next step":
      what = "saving a checkpoint at the next step and stopping"
    else:
      what = f"stopping once {self.stage}, before the final evaluation"
    self.requested = True  # first: the line below fails where its reader is gone (EPIPE)
    self.unsaid = (f"{name} received: {what}"
                   + (" (Ctrl-C again: stop at once)" if signum == signal.SIGINT else ""))
    self._say()

  def _say(self):
    """Print the line a signal left; one the signal interrupted mid-write (a reentrant call)
    waits for the next step boundary, a stdout not the Tee's is given up on."""
    line, self.unsaid = self.unsaid, None
    try:
      if line:
        print(line, flush=True)
    except RuntimeError:
      self.unsaid = line
    except OSError:
      pass

  def check(self, step):
    """Whether to stop after `step`; every process calls it once per step, in order."""
    self._say()
    if self.interrupted:
      raise KeyboardInterrupt
    if self.synced and not self.requested:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning("preemption notice: every process stops at step %d", step)
        self.requested = True
    return self.requested

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if sys.unraisablehook == self._dropped:
      sys.unraisablehook = self._unraisable
    self._say()


class NonFiniteLoss(RuntimeError):
  """Training stopped on a non-finite loss or parameters (run_folder.DIVERGED_FILE records it)."""


class Preempted(Exception):
  """Stopped on SIGTERM, Ctrl-C or SIGHUP after saving a checkpoint; exit
  run_folder.PREEMPTED_EXIT."""


def train_and_evaluate(config, workdir):
  """Train (or resume) the run in `workdir`, evaluate it, and return its results dict.

  A finished run is not run again: its saved results are returned (and said so), and conflict
  figures that its last attempt stopped before writing are drawn.
  """
  from mtl import evaluate, events, progress as progress_lib
  from mtl.data import sources

  config = normalize(config)
  setup = prepare(config, workdir)
  workdir = setup.workdir
  if setup.finished is not None:
    # the attempt is logged (by the writer process only); nothing else is written
    if jax.process_index() == 0:
      progress_lib.attach_log(os.path.join(workdir, run_folder.LOG_FILE))
    print(f"already finished at step {setup.finished['step']}; results in "
          f"{os.path.join(workdir, run_folder.RESULTS_FILE)}", flush=True)
    changes = run_folder.changed_fields(
        files.read_json(os.path.join(workdir, run_folder.CONFIG_FILE)), config.to_dict(),
        absolute_paths)
    if changes:  # eval.sets, say: the results above did not see them
      score = ("; to score other test sets, restore them with launch/restore.py and score them "
               "with launch/score.py") if "eval." in changes else ""
      print(f"not applied to a finished run: {changes}{score}", flush=True)
    if jax.process_index() == 0 and setup.run.plan.probe_every and _figures_missing(
        workdir, setup.run.model.task_names):
      print("drawing its conflict figures: the attempt that finished it stopped before they "
            "were all written", flush=True)
      writer = events.Writer(os.path.join(workdir, run_folder.EVENTS_DIR))
      print(_conflict_answer(workdir, writer, config.conflicts.ema_beta), flush=True)
      writer.close()
    return setup.finished
  # Inputs are opened before anything is written: a missing folder fails the start cleanly.
  images = sources.open_images(config.data, "train")
  streaks = (pipeline.load_streak_layers(config.degrade.rain.streak_dir)
             if config.degrade.rain.streak_dir else None)
  testsets = evaluate.load_testsets(config)
  pairs = pipeline.load_pairs(config.data.get("pairs", ""), setup.run.model.specs, config.data.cache_mb)
  is_writer = jax.process_index() == 0
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise ValueError(f"--workdir={workdir} cannot be created: {error.strerror}") from None
  lock = files.WorkdirLock(workdir, run_folder.LOCK_FILE)
  diverged = os.path.join(workdir, run_folder.DIVERGED_FILE)
  with _Preemption() as preemption:  # from here a stop leaves one line, as in training
    try:
      refusal = None
      if is_writer:  # the writer's checks; every process learns their verdict (distributed.agree)
        try:
          lock.acquire()
          progress_lib.attach_log(os.path.join(workdir, run_folder.LOG_FILE))
          if lock.stale:
            print(f"removed the stale lock of pid {lock.stale.get('pid')} (no longer running)",
                  flush=True)
          earlier = run_folder.read_results(workdir)
          if earlier is not None and earlier.get("step") != config.total_steps:
            _keep_results(workdir, earlier)  # before the config changes: a refusal changes nothing
          run_folder.check_or_write_config(workdir, config.to_dict(),
                                           run_defaults.config_defaults(), absolute_paths)
          if os.path.exists(diverged):  # an earlier attempt's: this one records its own outcome
            os.remove(diverged)
          if setup.run.plan.probe_every:  # a store this run cannot append to is refused now
            conflicts.Store(workdir).check(setup.run.model.task_names, ipt.body_layer_order(
                setup.run.abstract_state.params["body"])[0])
        except ValueError as error:
          refusal = error
      distributed.agree(refusal)
      return _train(setup, config, workdir, images, streaks, pairs, testsets, is_writer,
                    preemption)
    except (NonFiniteLoss, evaluate.NonFiniteOutput) as error:  # a study reads it: this lr diverged
      if is_writer:
        files.write_json(diverged, {"error": str(error)})
      raise
    except (OSError, ValueError) as error:  # the disk filled beyond the check's estimate
      if getattr(error, "errno", None) != errno.ENOSPC and "No space left on device" not in str(
          error):
        raise
      raise checkpoints.DiskFull(
          f"no space left on the device of {workdir}: training stopped; "
          f"{_kept(checkpoints.latest_saved_step(workdir))}. Free space and run the same command "
          "to resume") from None
    finally:
      if is_writer:
        lock.release()


def _keep_results(workdir, earlier):
  """Move the final results of a run's earlier end (a run extended past it) to the name of an
  evaluation during training, so this run's final results replace nothing."""
  path = os.path.join(workdir, run_folder.RESULTS_FILE)
  kept = os.path.join(workdir, run_folder.results_name(earlier["step"], final=False))
  if os.path.exists(kept) and files.read_json(kept) != earlier:
    raise ValueError(f"{path} (step {earlier['step']}) would be kept as {kept}, which holds "
                     "other results; move one of them away to extend the run")
  os.replace(path, kept)
  files.fsync_dir(workdir)
  print(f"kept the results of step {earlier['step']} as {kept}: the run goes on to a new end",
        flush=True)


def _train(setup, config, workdir, images, streaks, pairs, testsets, is_writer, preemption):
  from mtl import evaluate, events, progress as progress_lib
  run = setup.run
  probe_every = run.plan.probe_every
  save_at = frozenset(run_folder.checkpoint_steps(config.total_steps, config.checkpoint_every))
  mngr = checkpoints.manager(workdir, config.keep_checkpoints, scheduled=save_at)
  with jax.set_mesh(run.mesh):
    source_note = ""
    if mngr.latest_step() is not None:
      state = checkpoints.restore(mngr, run.abstract_state)
      print(f"resumed {workdir} at step {int(state.step)}", flush=True)
    elif config.regime == "finetune":
      state, source_note = finetune_params(run, config.init_from)
    else:
      state = run.init_state()
    start = int(state.step)
    names = run.model.task_names
    hyper = step_args(config)  # traced: runs differing only in these values share the steps
    layer_names, order = ipt.body_layer_order(state.params["body"])
    affinity_every, affinity_fn, affinity_buffer = _affinity_setup(run, config, workdir, start,
                                                                   is_writer)
    if is_writer:
      print(setup.banner(data=f"{images.description}, {len(images)} images"), flush=True)
      if source_note:
        print(source_note, flush=True)
      _note_thread_change(workdir, start)
      if probe_every or start == 0:
        conflicts.truncate_after(workdir, start - 1)  # steps >= start will be probed again
    metrics_log = MetricsLog(os.path.join(workdir, run_folder.METRICS_FILE), start, enabled=is_writer)

    shardings = (run.state_shardings, None)
    plain = {}
    def plain_step(task_names):
      if task_names not in plain:
        plain[task_names] = jax.jit(make_step(run.model, config, run.optimizer, task_names,
                                              run.plan),
                                    out_shardings=shardings, donate_argnums=0)
      return plain[task_names]
    probe = jax.jit(make_step(run.model, config, run.optimizer, names, run.plan, probe=True),
                    out_shardings=shardings + (None,), donate_argnums=0)

    writer = events.Writer(os.path.join(workdir, run_folder.EVENTS_DIR), enabled=is_writer)
    writer.hparams(hparams_of(config), trial_id=os.path.basename(workdir))
    # Every attempt marks its start, a fresh one too: a killed attempt's points past the
    # checkpoint it resumes from (all of them, where it saved none) are logged again from here.
    writer.restart(start + 1)
    missing = os.path.join(workdir, run_folder.results_name(start, final=False))
    if (start and config.eval_every and start % config.eval_every == 0
        and start < config.total_steps and not os.path.exists(missing)):
      # the attempt that saved this step stopped before evaluating it (the save comes first)
      if is_writer:
        print(f"evaluating step {start}: the attempt that saved it stopped before its "
              "evaluation", flush=True)
      evaluate.evaluate(run.model, state.params, config, testsets, workdir, start, writer,
                        ema_params=state.ema_params)
    progress = progress_lib.Progress(config.total_steps, start, every=config.log_every)
    # Host crops built ahead by the pipeline's threads, copied onto the devices ahead by
    # DevicePrefetch's; the time the loop still waits for a batch is logged as data_wait.
    batches = prefetch.DevicePrefetch(pipeline.train_batches(
        images, run.model.specs, config.model.patch_size, config.data.batch_size, config.seed,
        start_step=start, num_steps=config.total_steps - start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        schedule=config.schedule, streaks=streaks, pairs=pairs,
        probe_size=run.plan.probe_size, step_offset=int(hyper["step_offset"])), run.mesh)
    probe_buffer, pending, compiled = [], [], set()
    probe_batch = {"size": run.plan.batch_size or config.data.batch_size,
                   "fresh": bool(run.plan.batch_size)}
    step, started = start, time.time()
    try:
      if preemption.requested:  # asked for during the start-up: nothing new to save
        raise Preempted(f"stopped before training {'resumed' if start else 'started'}: "
                        "nothing new to save; run the same command to "
                        + ("resume" if start else "start it"))
      preemption.stage = "the next step"
      for step, batch in batches:
        task_names = tuple(n for n in names if n in batch)
        if affinity_every and step % affinity_every == 0:  # before the step donates `state`
          if "affinity" not in compiled and is_writer:
            print("compiling the affinity lookahead", flush=True)
          t0 = time.monotonic()
          affinity_buffer.append((step, affinity_fn(state.params, batch,
                                                    data_step(state.step, hyper),
                                                    config.mtl.get("affinity_lr", 0.0),
                                                    hyper["seed"])))
          if "affinity" not in compiled:  # its first call compiles, as a step's (below)
            compiled.add("affinity")
            seconds = time.monotonic() - t0
            progress.exclude(seconds)
            if is_writer:
              print(f"compiled the affinity lookahead in {seconds:.1f}s", flush=True)
        probing = run.plan.probes(step)
        key = ("probe",) if probing else task_names
        what = "probe step" if probing else f"step ({','.join(task_names)})"
        if key not in compiled and is_writer:  # a paper-size one takes a while: say so first
          print(f"compiling the {what}", flush=True)
        t0 = time.monotonic()
        if probing:
          state, metrics, grams = probe(state, batch, hyper)
          probe_buffer.append((step, grams[np.asarray(order)]))
        else:
          state, metrics = plain_step(task_names)(state, batch, hyper)
        if key not in compiled:  # the first call traces and compiles (execution is async)
          compiled.add(key)
          seconds = time.monotonic() - t0
          progress.exclude(seconds)
          if is_writer:
            print(f"compiled the {what} in {seconds:.1f}s", flush=True)
        pending.append((step, metrics))
        done = step + 1
        stop = preemption.check(done)  # on every step: all processes must ask in step
        checkpoint_now = done in save_at or stop
        if done % config.log_every == 0 or checkpoint_now:
          try:
            _log_metrics(pending, writer, progress, run.schedule, done, metrics_log, names,
                         data_wait=batches.wait_seconds)
          except NonFiniteLoss as error:
            raise NonFiniteLoss(f"{error}: training stopped; {_kept(mngr.latest_step())}. "
                                "Lower optim.lr or set optim.grad_clip") from None
          pending = []
        if checkpoint_now:
          if not bool(_all_finite(state.params)):
            raise NonFiniteLoss(f"non-finite parameters after step {step}: training stopped; "
                                f"{_kept(mngr.latest_step())}. Lower optim.lr or set "
                                "optim.grad_clip")
          _check_space(mngr, state, done)
          _flush_probes(workdir, probe_buffer, layer_names, names, is_writer, writer,
                        probe_batch)
          probe_buffer = []
          _flush_affinity(workdir, affinity_buffer, names, is_writer)
          affinity_buffer = []
          checkpoints.save(mngr, done, state, force=True)
          if is_writer:  # the time so far counts even if the process is killed before its end
            now = time.time()
            _record_wall(workdir, now - started)
            started = now
        if (config.eval_every and done % config.eval_every == 0 and done < config.total_steps
            and not stop):  # a stop saved this step first: the resume evaluates it (above)
          t0 = time.monotonic()
          evaluate.evaluate(run.model, state.params, config, testsets, workdir, done, writer,
                            ema_params=state.ema_params)
          progress.exclude(time.monotonic() - t0)  # not training: out of steps/s and the ETA
        if stop:  # not preemption.requested: a signal after check() is seen at the next step
          break
      preemption.stage = "the last checkpoint is saved"
    finally:  # a save in flight completes even when training stops on an error
      try:
        batches.close()
        mngr.wait_until_finished()
      finally:  # every attempt's time counts: one stopped by an error or a second Ctrl-C too
        if is_writer:  # (since its last checkpoint's record)
          _record_wall(workdir, time.time() - started)
      mngr.close()
      metrics_log.close()
    final_step = int(state.step)
    if is_writer:
      _record_compute(workdir, run, config, final_step)
    # A stop asked for before the final evaluation skips it (several processes: a notice after
    # the last step's own check is agreed on at one more sync point, by all of them alike).
    if preemption.check(final_step + 1):
      writer.close()
      what = "resume" if final_step < config.total_steps else "evaluate it"
      raise Preempted(f"preempted: checkpoint saved at step {final_step} in {workdir}; "
                      f"run the same command to {what}")
    preemption.stage = None  # a stop asked for now waits for the evaluation and the figures
    if probe_every:
      preemption.finishing = "the final evaluation and the conflict figures finish first"
    results = evaluate.evaluate(run.model, state.params, config, testsets, workdir, final_step,
                                writer, final=True,
                                ema_params=state.ema_params)
    if is_writer and probe_every:  # inside: a SIGTERM here killed the run before its figures
      print(_conflict_answer(workdir, writer, config.conflicts.ema_beta), flush=True)
    writer.close()
  return results


def _figures_missing(workdir, task_names):
  """Whether a figure `_conflict_answer` draws is not in the run's conflicts folder."""
  from mtl import draw
  folder = run_folder.conflicts_dir(workdir)
  return not all(os.path.exists(os.path.join(folder, name))
                 for name in draw.file_names(conflicts.pair_names(task_names)))


def _conflict_answer(workdir, writer, ema_beta):
  """Draw the conflict figures (averaged over the headline phase, as launch/analyze.py does)
  and return the run's answer: per pair the headline verdict, phase warnings, the modules
  beyond noise in that phase, where the figures are, and the command that says more."""
  from mtl import draw
  record = conflicts.load(workdir)
  phased, window = conflicts.phase_verdicts(record), conflicts.headline_window(record)
  print(f"drawing the conflict figures of {record.num_steps} probe steps", flush=True)
  paths = draw.draw_and_log(record, run_folder.conflicts_dir(workdir), writer, window, ema_beta,
                            scalars=False)  # the scalars were logged per flush
  figures = os.path.dirname(paths[0])
  where = conflicts.layers_beyond_noise(record.last(window), top=3)
  return "\n".join([
      conflicts.format_headline(phased),
      conflicts.format_layers_beyond_noise(where),
      f"figures: {figures}/ ({', '.join(os.path.basename(p) for p in paths[:3])}, "
      "cos_layers_steps-<pair>.png)",
      f"per phase, layers and noise floor: python launch/analyze.py --workdir={workdir}"])


def _check_space(mngr, state, step):
  """Stop with one line (checkpoints.DiskFull) before a save the disk cannot hold, so the last
  checkpoint stays whole and orbax's write threads never fail half-way."""
  mngr.wait_until_finished()  # an unfinished save's bytes are not on the disk yet (save waits too)
  short = checkpoints.space_shortfall(str(mngr.directory), state)
  if jax.process_count() > 1:  # saving is collective: process 0's answer stops all, or none
    from jax.experimental import multihost_utils
    mb = np.asarray([-1.0, -1.0] if short is None else np.divide(short, 2 ** 20), np.float32)
    mb = np.asarray(multihost_utils.broadcast_one_to_all(mb))
    short = None if mb[0] < 0 else tuple(float(x) * 2 ** 20 for x in mb)
  if short:
    needed, free = short
    raise checkpoints.DiskFull(
        f"not enough space in {mngr.directory} for the checkpoint of step {step}: it needs "
        f"{files.format_bytes(needed)}, {files.format_bytes(free)} are free; "
        f"{_kept(mngr.latest_step())}. Free space (or lower keep_checkpoints) and run the same "
        "command to resume")


def _kept(latest):
  """What a stop keeps, given the newest complete checkpoint step (or None)."""
  return (f"the last good checkpoint (step {latest}) is kept" if latest is not None
          else "no checkpoint was saved before it")


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _record_wall(workdir, seconds):
  """Add an attempt's training seconds to <workdir>/compute.json's wall_seconds; a CPU run's
  cpu_threads: its XLA thread count, which splits its sums (_note_thread_change)."""
  path = os.path.join(workdir, run_folder.COMPUTE_FILE)
  previous = files.read_json(path) if os.path.exists(path) else {}
  threads = {"cpu_threads": xla_options.cpu_threads()} if jax.default_backend() == "cpu" else {}
  files.write_json(path, {**previous, **threads,
                          "wall_seconds": previous.get("wall_seconds", 0.0) + seconds})


def _note_thread_change(workdir, start):
  """A CPU run resumed on another XLA thread count than its last attempt's (cpu_threads 0:
  every CPU it may use, which a requeue on another node or taskset changes): one warning line."""
  path = os.path.join(workdir, run_folder.COMPUTE_FILE)
  if not start or jax.default_backend() != "cpu" or not os.path.exists(path):
    return
  before, now = files.read_json(path).get("cpu_threads"), xla_options.cpu_threads()
  if before is not None and before != now:
    print(f"warning: this attempt runs on {now} XLA CPU thread(s), the steps before {start} ran "
          f"on {before}: a CPU run's sums split by thread, so from step {start} on it is not "
          f"bitwise the run an uninterrupted one would be (a run started with config.cpu_threads=N "
          "keeps N)",
          flush=True)


def _record_compute(workdir, run, config, final_step):
  """<workdir>/compute.json: steps, images seen, training FLOPs (the model's, counted from its
  shapes by mtl/flops.py: what the steps train, whatever the backend compiles); its wall time
  is every attempt's (_record_wall)."""
  path = os.path.join(workdir, run_folder.COMPUTE_FILE)
  previous = files.read_json(path)
  per_step_images = config.data.batch_size * (len(config.tasks) if config.schedule == "all" else 1)
  scales = [s.scale for s in run.model.specs]
  per_step = flops.train_step(run.model.cfg, scales, config.data.batch_size,
                              config.loss.contrastive_weight > 0)
  if config.schedule == "one":  # one task per step: the tasks' mean
    per_step /= len(scales)
  files.write_json(path, {
      **previous,  # fields others own: the launcher's program counts, the attempts' wall time
      "steps": final_step, "images_seen": final_step * per_step_images,
      "flops_per_step": per_step, "train_flops": per_step * final_step,
      "flops_counted_by": run_folder.FLOPS_COUNTED_BY})


def _log_metrics(pending, writer, progress, schedule, done, metrics_log=None, task_names=(),
                 data_wait=None):
  """Fetch pending step metrics, stop on a non-finite one, write TensorBoard, metrics.jsonl and
  the progress line (per-task losses: means over the steps since the last line, in the order of
  `task_names`, the config's, as the banner lists them). `data_wait`: the seconds the loop has
  waited for batches so far; its share of the wall time since the last line is logged as
  train/data_wait (TensorBoard, metrics.jsonl) and 'data wait' (the line)."""
  if not pending:
    return
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(float(v))}
    if bad:
      shown = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
      total = float(metrics["loss/total"])
      raise NonFiniteLoss(f"non-finite {shown} at step {step}"
                          + (f" (loss/total {total:.3g} is finite)" if np.isfinite(total) else ""))
  mean = {k: float(np.mean([m[k] for m in fetched if k in m]))
          for k in set().union(*fetched)}
  mean["lr"] = float(schedule(done - 1))
  rank = {name: i for i, name in enumerate(task_names)}
  per_task = {k[len("loss/"):]: v for k, v in sorted(
      mean.items(), key=lambda kv: (rank.get(kv[0][len("loss/"):], len(rank)), kv[0]))
              if k.startswith("loss/") and k != "loss/total"}
  shown = dict({"loss": mean["loss/total"]}, **(per_task if len(per_task) > 1 else {}))
  line = progress.update(done, shown, data_wait=data_wait)
  if line and jax.process_index() == 0:
    print(line, flush=True)
  mean["steps_per_sec"] = progress.rate()
  if data_wait is not None:
    mean["data_wait"] = progress.wait_share()
  writer.scalars(done, {f"train/{k}": v for k, v in mean.items()})
  if metrics_log is not None:
    rate = mean["steps_per_sec"]
    metrics_log.write({
        "step": done, "time": round(time.time(), 3), "steps": len(fetched),
        "loss": per_task,
        "loss_total": mean["loss/total"], "lr": mean["lr"], "grad_norm": mean["grad_norm"],
        "steps_per_sec": rate if np.isfinite(rate) else None,
        "data_wait": _finite_or_none(mean.get("data_wait"))})


def _finite_or_none(value):
  return float(value) if value is not None and np.isfinite(value) else None


def _flush_probes(workdir, probe_buffer, layer_names, task_names, is_writer, writer, probe_batch):
  """Append the buffered probes' half-split Gramians (S, L, 2T, 2T) to the store (with the
  probe batch they measured) and log their whole-body raw and corrected cosines and conflict
  fractions to TensorBoard (per checkpoint)."""
  if not probe_buffer or not is_writer:
    return
  from mtl import draw
  steps = np.array([s for s, _ in probe_buffer], np.int64)
  grams = np.stack(jax.device_get([g for _, g in probe_buffer])).astype(np.float32)
  conflicts.append(workdir, steps, grams, layer_names, list(task_names), probe_batch)
  stored = conflicts.Store(workdir).meta().get("probe_batch")  # analyze reads it: same intervals
  draw.log_probe_scalars(conflicts.Record.from_halves(steps, grams, layer_names, task_names,
                                                      probe_batch=stored), writer)


def _affinity_setup(run, config, workdir, start, is_writer):
  """config.mtl.affinity_every: (every, jitted TAG affinity, buffer); (0, None, []) when off."""
  every = aggregators.affinity_every(config.get("mtl"), len(config.tasks), config.schedule)
  if not every:
    return 0, None, []
  from mtl.conflicts import affinity  # imports scipy (~1 s): only for runs that measure it
  if is_writer:
    affinity.truncate_after(workdir, start - 1)  # steps >= start will be measured again
  return every, jax.jit(affinity.make_affinity(run.model, config, run.model.task_names)), []


def _flush_affinity(workdir, buffer, task_names, is_writer):
  if not buffer or not is_writer:
    return
  from mtl.conflicts import affinity
  steps = np.array([s for s, _ in buffer], np.int64)
  affinity.append(workdir, steps, np.stack(jax.device_get([z for _, z in buffer])),
                  list(task_names))
