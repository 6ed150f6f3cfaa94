"""What a run tells its user: the one-line progress log (steps, rate, ETA, per-task losses) and
the run's text log (`Tee`: stdout and stderr also appended to <workdir>/train.log).

`Progress(total_steps, start_step, every)` logs, via absl logging,
  step 250/1000 (25.0%) | 3.21 steps/s | ETA 3m54s | loss 0.0123
with the rate over the last `window` updates (`every_seconds`: a line at most that often
instead, for work of uneven items: images, batches, each named by `unit`). Compilation and
evaluation are not training:
`exclude(seconds)` takes their duration out of the clock, so the first ETA is already right and
an evaluation neither dips the rate nor dilutes the data wait. Given the seconds
the loop has waited for data so far (`update(..., data_wait=s)`), the line also says which share
of the time since the previous update went to waiting (`| data wait 2%`; `wait_share()`).
"""
import collections
import errno
import json
import os
import shlex
import socket
import sys
import time

import numpy as np
from absl import logging

from mtl import files


class Progress:
  """Logs step/total, steps/s over the recent window, ETA and given metrics every `every` steps.

  update(step, metrics) takes the number of steps done; it logs at every multiple of `every`
  (a resumed run's too: resumed at 7 with every=5, at 10, 15, ...) and at the last step, and
  returns the line (else None).
  """

  def __init__(self, total_steps, start_step=0, every=100, window=20, clock=time.monotonic,
               every_seconds=0.0, unit="step"):
    self.total_steps = int(total_steps)
    self.every = max(1, int(every))
    self.every_seconds, self.unit = float(every_seconds), unit
    self._clock = clock
    self._last_line = clock()
    self._excluded = 0.0
    self._history = collections.deque([(clock(), int(start_step))], maxlen=max(2, window + 1))
    self._waits = collections.deque([(self._now(), 0.0)], maxlen=2)  # (clock, seconds waited)

  def _now(self):
    return self._clock() - self._excluded

  def exclude(self, seconds):
    """Time spent on something other than steps (a compile, an evaluation): not counted in
    the rate, the ETA or the data wait's share."""
    self._excluded += max(0.0, float(seconds))

  def rate(self):
    """Steps per second over the recent window; NaN before two updates."""
    (t0, s0), (t1, s1) = self._history[0], self._history[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else float("nan")

  def eta(self):
    """Seconds left at the recent rate; NaN if unknown."""
    rate = self.rate()
    step = self._history[-1][1]
    return max(0, self.total_steps - step) / rate if rate > 0 else float("nan")

  def wait_share(self):
    """The share of the time between the last two updates spent waiting for data; NaN if
    unknown."""
    (t0, w0), (t1, w1) = self._waits[0], self._waits[-1]
    return min(1.0, max(0.0, (w1 - w0) / (t1 - t0))) if t1 > t0 else float("nan")

  def update(self, step, metrics=None, data_wait=None):
    step = int(step)
    self._history.append((self._now(), step))
    if data_wait is not None:
      self._waits.append((self._history[-1][0], float(data_wait)))
    if step < self.total_steps and (
        self._clock() - self._last_line < self.every_seconds if self.every_seconds
        else step % self.every):
      return None
    self._last_line = self._clock()
    parts = [f"{self.unit} {step}/{self.total_steps} "
             f"({100 * step / max(1, self.total_steps):.1f}%)",
             f"{self.rate():.3g} {self.unit}s/s", f"ETA {files.format_duration(self.eta())}"]
    if data_wait is not None:
      parts.append(f"data wait {self.wait_share():.0%}")
    parts += [f"{k} {v:.4g}" if isinstance(v, (int, float, np.floating, np.integer))
              else f"{k} {v}" for k, v in (metrics or {}).items()]
    line = " | ".join(parts)
    logging.info("%s", line)
    return line


class _Stream:
  """A text stream writing to the original stream and to the Tee.

  Once the original is gone (EPIPE: nothing reads its pipe any more, as when the parent that pumped
  a trainer's output died; EIO: its terminal hung up) only the Tee is written, with a line saying
  so; the original's file descriptor is pointed at /dev/null, so what it still holds, and whatever
  else writes to it (the flush at exit, C++ logs), goes nowhere instead of failing.
  """

  def __init__(self, original, tee):
    self._original, self._tee = original, tee
    self._gone = False

  def write(self, text):
    self._tee.write(text)
    if not self._gone:
      try:
        self._original.write(text)
      except OSError as error:
        self._lost_or_raise(error)
    return len(text)

  def flush(self):
    if not self._gone:
      try:
        self._original.flush()
      except OSError as error:
        self._lost_or_raise(error)
    self._tee.flush()

  def _lost_or_raise(self, error):
    """EPIPE (its reader died) or EIO (its terminal hung up): the original is gone."""
    if error.errno not in (errno.EPIPE, errno.EIO):
      raise error
    self._lost()

  def _lost(self):
    self._gone = True
    _to_devnull(self._original)
    self._tee.take_over()
    self._tee.note(f"(the reader of this process's {self._name()} is gone: from here on its "
                   "output goes to this log only)")

  def _name(self):
    return {1: "stdout", 2: "stderr"}.get(_fileno(self._original), "output")

  def __getattr__(self, name):
    return getattr(self._original, name)


def _fileno(stream):
  try:
    return stream.fileno()
  except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
    return None


def _to_devnull(stream):
  """Point `stream`'s file descriptor (if it has one) at /dev/null."""
  fd = _fileno(stream)
  if fd is None:
    return
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, fd)
  finally:
    os.close(null)


# Writes a Tee on stand-by keeps (a printed line is two: its text and its newline)
STANDBY_WRITES = 40


class Tee:
  """Copies sys.stdout and sys.stderr (absl's log lines included) into a run's text log.

  Until attach(path) it keeps what was written in memory, so the log of an attempt starts with
  its command line and everything printed before the workdir was known to be usable; after
  attach every line is appended to the file as it is written. Nothing is written to disk
  before attach (a refused run leaves no file). A log that can no longer be written (a full
  disk) is given up, said once on the terminal: the output goes on there, and the run stops
  (or not) for its own reasons, with its own one line.
  """

  current = None

  def __init__(self, argv=None):
    self.argv = list(sys.argv if argv is None else argv)
    self.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    self._buffer, self._file, self._path, self._given_up = [], None, None, False
    self._at_line_start, self._notes = True, []
    self._standby = None  # the log a parent writes (stand_by); the last lines kept for it

  def stand_by(self, path):
    """Its parent writes the log `path` from this process's output (the study runner): keep only
    the last lines (the parent may not have had them), and take the log over (take_over) if
    that parent goes."""
    self._standby, self._buffer = path, collections.deque(maxlen=STANDBY_WRITES)

  def take_over(self):
    """Write the log from here on, the parent that wrote it gone (its pipe's reader died)."""
    if self._standby is None or self._file is not None or self._given_up:
      return
    path, tail, self._standby, self._buffer = self._standby, "".join(self._buffer), None, []
    self._path = path
    self._file = open(path, "a")
    self._write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} | pid "
                f"{os.getpid()}: the process that wrote this log is gone; this run writes it "
                "from here, from its last lines (some logged above already):\n" + tail)
    self.flush()

  def write(self, text):
    self._write(text)
    if text:
      self._at_line_start = text.endswith("\n")
    if self._notes and self._at_line_start:
      notes, self._notes = "".join(self._notes), []
      self._write(notes)

  def note(self, line):
    """Write `line` (to the log only) once the line being written ends."""
    self._notes.append(line + "\n")
    self.write("")

  def _write(self, text):
    if self._file is not None:
      try:
        self._file.write(text)
      except OSError as error:
        self._give_up(error)
    elif not self._given_up:
      self._buffer.append(text)  # a deque of the last lines while on stand-by

  def flush(self):
    if self._file is not None:
      try:
        self._file.flush()
      except OSError as error:
        self._give_up(error)

  def _give_up(self, error):
    file, self._file, self._given_up = self._file, None, True
    try:
      if file is not None:
        file.close()  # what it still holds cannot be written either
    except OSError:
      pass
    try:
      terminal = getattr(self, "_saved", (sys.__stdout__, sys.__stderr__))[1]
      terminal.write(f"\nwarning: {self._path} cannot be written ({error.strerror or error}): "
                     "the output goes on to the terminal only\n")
      terminal.flush()
    except OSError:  # that is gone too
      pass

  def attach(self, path):
    if self._file is not None or self._given_up:
      return
    self._path = path
    self._file = open(path, "a")
    self._write(f"=== {self.started} | pid {os.getpid()} on {socket.gethostname()} | "
                f"{shlex.join([sys.executable] + self.argv)}\n")
    self._write("".join(self._buffer))
    self._buffer = []
    self.flush()

  def __enter__(self):
    self._saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Stream(sys.stdout, self), _Stream(sys.stderr, self)
    self._absl = logging.get_absl_handler().python_handler
    self._absl_stream = self._absl.stream
    self._absl.stream = sys.stderr  # absl bound sys.stderr at import
    Tee.current = self
    return self

  def __exit__(self, *exc):
    Tee.current = None
    self._absl.stream = self._absl_stream
    sys.stdout, sys.stderr = self._saved
    if self._file is not None:
      file, self._file = self._file, None
      try:
        file.close()
      except OSError as error:
        self._give_up(error)


def attach_log(path):
  """Start appending this attempt's output to `path`, the run's log (if a Tee is installed and
  $MTL_TRAIN_LOG is not 0: a parent that writes the log itself, like the study runner, sets it)."""
  if Tee.current is None:
    return
  if os.environ.get("MTL_TRAIN_LOG", "1") != "0":
    Tee.current.attach(path)
  else:
    Tee.current.stand_by(path)


def hparams_of(config):
  """The run's TensorBoard HParams: what distinguishes the runs of a study (and a remedy's run
  from a plain one: config.mtl's aggregator, loss weighting and TAG affinity)."""
  from mtl import aggregators
  return {**aggregators.describe(config.get("mtl"), len(config.tasks), config.schedule),
          "lr": float(config.optim.lr), "seed": int(config.seed), "regime": config.regime,
          "tasks": ",".join(config.tasks), "schedule": config.schedule,
          "n_feats": int(config.model.n_feats),
          "layers": f"{config.model.num_encoder_layers}+{config.model.num_decoder_layers}",
          "batch_size": int(config.data.batch_size), "total_steps": int(config.total_steps),
          "precision": config.precision, "init_from": config.init_from}


def _logged_step(line):
  """The step of a metrics.jsonl line, or None for a line that is not a metrics record."""
  try:
    step = json.loads(line).get("step")
  except (ValueError, AttributeError, RecursionError):  # RecursionError: nested past the parser
    return None
  return step if isinstance(step, int) and not isinstance(step, bool) else None


class MetricsLog:
  """<workdir>/metrics.jsonl: one JSON line per logged step; records past `start` are dropped on
  a resume (those steps are trained and logged again), and so is a torn last line (a write cut
  short); any other line is kept as it is, with a warning."""

  def __init__(self, path, start, enabled=True):
    self.path, self._file = path, None
    if not enabled:
      return
    if os.path.exists(path):
      with open(path, errors="surrogateescape") as f:
        lines = f.readlines()
      kept, odd = [], []
      for number, line in enumerate(lines, 1):
        step = _logged_step(line)
        if step is None and number == len(lines) and not line.endswith("\n"):
          continue  # torn
        if step is None:
          odd.append(number)
        if step is None or step <= start:
          kept.append(line if line.endswith("\n") else line + "\n")
      if odd:
        logging.warning("%s: kept %d line(s) that are not metrics records, as they are (line "
                        "%s)", path, len(odd), ", ".join(map(str, odd[:8])) + (
                            " ..." if len(odd) > 8 else ""))
      data = "".join(kept).encode(errors="surrogateescape")
      files.write_atomic(path, lambda f: f.write(data))
    self._file = open(path, "a")

  def write(self, record):
    if self._file is not None:
      self._file.write(json.dumps(record, sort_keys=True) + "\n")
      self._file.flush()

  def close(self):
    if self._file is not None:
      self._file.close()
      self._file = None

