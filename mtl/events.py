"""TensorBoard event files without TensorFlow: writing scalars and PNGs, reading scalars back.

`Writer(logdir)` writes scalars and PNG images through tensorboard's own EventFileWriter
and protos (tensorboard.compat.proto), which TensorBoard and EventAccumulator read like
files written by tf.summary. `Writer(logdir, enabled=False)` (non-zero processes) writes
nothing and creates no file. `read_scalars(logdir, tag)` reads a scalar series back.
`Writer.hparams` records a run's hyperparameters for TensorBoard's HParams dashboard through the
hparams plugin's own protos (tensorboard.plugins.hparams.summary_v2 builds them without
TensorFlow), in an event file of their own that replaces an earlier attempt's;
`read_hparams(logdir)` reads them back.

Where the disk fills, the error of tensorboard's write thread is raised by the next write or
flush, once: the thread does not print its traceback too.
"""
import io
import os
import struct
import threading
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> channels (palette -> RGB)


def encode_png(image):
  """uint8 PNG bytes of an HW, HW1, HW3 or HW4 image; other dtypes are taken as [0, 255]."""
  from PIL import Image
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
    raise ValueError(f"image of shape {image.shape}; valid: (H, W), (H, W, 1|3|4)")
  if image.dtype != np.uint8:
    image = np.clip(np.round(np.asarray(image, np.float64)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def write_png(path, image, replace=True):
  """An image as a PNG file, written atomically (parent folders created); replace=False keeps a
  file already there (FileExistsError)."""
  from mtl import files
  data = encode_png(image)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_atomic(path, lambda f: f.write(data), replace)


def png_info(data):
  """(height, width, channels) from a PNG's header."""
  if not data.startswith(_PNG_SIGNATURE) or len(data) < 26 or data[12:16] != b"IHDR":
    raise ValueError("image bytes are not a PNG (bad signature or header)")
  width, height = struct.unpack(">II", data[16:24])
  return height, width, _PNG_CHANNELS.get(data[25], 3)


EVENT_FILE_PREFIX = "events.out.tfevents."
HPARAMS_SUFFIX = "-hparams"  # after <pid>.<n>: the name's fields before it stay where they were


def _quiet_writer_threads(args):
  """threading.excepthook: nothing printed for a failed tensorboard write thread (its error is
  raised in the thread that writes next); every other thread's goes to the hook it replaced."""
  from tensorboard.summary.writer import event_file_writer
  kind = getattr(event_file_writer, "_AsyncWriterThread", None)
  if kind is not None and isinstance(args.thread, kind) and issubclass(args.exc_type, Exception):
    return
  _quiet_writer_threads.previous(args)


def _event_file_writer(logdir, **kwargs):
  """tensorboard's EventFileWriter, its write thread's traceback held back."""
  if threading.excepthook is not _quiet_writer_threads:
    _quiet_writer_threads.previous = threading.excepthook
    threading.excepthook = _quiet_writer_threads
  return EventFileWriter(logdir, **kwargs)


def _held_error(writer):
  """The error that stopped an EventFileWriter's write thread, or None."""
  worker = getattr(getattr(writer, "_async_writer", None), "_worker", None)
  return getattr(worker, "exception", None)


def remove_event_files(logdir):
  """Delete the TensorBoard event files directly in `logdir` (nothing else); returns how many."""
  if not os.path.isdir(logdir):
    return 0
  found = [n for n in os.listdir(logdir) if n.startswith(EVENT_FILE_PREFIX)]
  for name in found:
    os.remove(os.path.join(logdir, name))
  return len(found)


class Writer:
  """Scalars and images into an event file in `logdir` (nothing at all if not enabled)."""

  def __init__(self, logdir, enabled=True, flush_secs=30):
    self.logdir = logdir
    self.enabled = enabled
    self._writer = _event_file_writer(logdir, flush_secs=flush_secs) if enabled else None
    self._closed = False
    self._raised = False  # the write thread's error was raised to a caller

  def _add(self, step, values):
    if self._closed:
      raise RuntimeError(f"summary writer for {self.logdir} is closed")
    if self._writer is None or not values:
      return
    event = event_pb2.Event(wall_time=time.time(), step=int(step),
                            summary=summary_pb2.Summary(value=values))
    self._write(self._writer.add_event, event)

  def _write(self, call, *args):
    try:
      call(*args)
    except Exception:
      self._raised = True
      raise

  def scalars(self, step, values):
    """Write {tag: number} at `step`."""
    if self._writer is None:
      return self._add(step, [])
    entries = []
    for tag, value in values.items():
      try:
        entries.append(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))
      except (TypeError, ValueError):
        raise ValueError(f"scalar {tag!r}={value!r} is not a number") from None
    self._add(step, entries)

  def image(self, step, tag, image):
    """Write one image at `step`: PNG bytes, or an (H, W[, C]) array in [0, 255]."""
    if self._writer is None:
      return self._add(step, [])
    data = bytes(image) if isinstance(image, (bytes, bytearray)) else encode_png(image)
    height, width, channels = png_info(data)
    proto = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                      encoded_image_string=data)
    self._add(step, [summary_pb2.Summary.Value(tag=tag, image=proto)])

  def hparams(self, values, trial_id="", start_time=None):
    """Record {name: str | number | bool} as this run's HParams session (step 0).

    TensorBoard's HParams dashboard shows the first session info it reads in a run (both its
    loaders keep a tag's first metadata; a START mark drops no metadata), so each attempt's goes
    to an event file of its own (<name>-hparams) that replaces the ones written before it: the
    dashboard shows this attempt's. A TensorBoard already running keeps what it read until it is
    restarted. Runs from before this file hold each attempt's in its main event file: the
    dashboard shows their first attempt's, read_hparams the last."""
    if self._writer is None:
      return self._add(0, [])
    from tensorboard.plugins.hparams import summary_v2
    bad = {k: v for k, v in values.items() if not isinstance(v, (str, bool, int, float))}
    if bad:
      raise ValueError(f"hparams {bad!r}: values must be str, bool, int or float")
    proto = summary_v2.hparams_pb(values, trial_id=trial_id,
                                  start_time_secs=time.time() if start_time is None else start_time)
    self._add(0, [])  # a closed writer refuses
    earlier = [n for n in os.listdir(self.logdir)
               if n.startswith(EVENT_FILE_PREFIX) and n.endswith(HPARAMS_SUFFIX)]
    own = _event_file_writer(self.logdir, filename_suffix=HPARAMS_SUFFIX)
    try:
      own.add_event(event_pb2.Event(wall_time=time.time(), step=0,
                                    summary=summary_pb2.Summary(value=list(proto.value))))
    finally:
      own.close()
    error = _held_error(own)
    if error is not None:
      raise error
    for name in earlier:  # once this one is whole: a failure above leaves the earlier one
      os.remove(os.path.join(self.logdir, name))

  def restart(self, step):
    """Mark a resumed run's start at `step`: TensorBoard's Python loader (and read_scalars)
    drops the points written before the mark at steps >= `step` (a killed attempt's)."""
    self._add(step, [])  # a closed writer refuses
    if self._writer is not None:
      self._writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=int(step),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def flush(self):
    if self._writer is not None and not self._closed:
      self._write(self._writer.flush)

  def close(self):
    """Flush and close; calling it again does nothing. A write that failed in the write thread
    and was not raised by a later write or flush is raised here."""
    if self._writer is not None and not self._closed:
      self._closed = True
      self._writer.close()
      error = _held_error(self._writer)
      if error is not None and not self._raised:
        self._raised = True
        raise error
    self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_scalars(events_dir, tag):
  """(steps, values) of a scalar in a run's TensorBoard events (last value per step)."""
  from tensorboard.backend.event_processing import event_accumulator
  if not os.path.isdir(events_dir):
    return np.zeros(0, np.int64), np.zeros(0)
  acc = event_accumulator.EventAccumulator(events_dir,
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  if tag not in acc.Tags().get("scalars", []):
    return np.zeros(0, np.int64), np.zeros(0)
  by_step = {e.step: e.value for e in acc.Scalars(tag)}  # a resumed run re-logs some steps
  steps = np.array(sorted(by_step), np.int64)
  return steps, np.array([by_step[s] for s in steps], np.float64)


def read_hparams(events_dir):
  """{name: value} of the last HParams session recorded in a run's events ({} if none): its
  event files read in TensorBoard's order (by name: their creation time), the last one kept."""
  from tensorboard.backend.event_processing import event_file_loader, io_wrapper
  from tensorboard.plugins.hparams import metadata
  if not os.path.isdir(events_dir):
    return {}
  content = None
  for name in sorted(os.listdir(events_dir)):
    path = os.path.join(events_dir, name)
    if not io_wrapper.IsTensorFlowEventsFile(path) or not os.path.isfile(path):
      continue
    for event in event_file_loader.LegacyEventFileLoader(path).Load():
      for value in event.summary.value:
        if (value.tag == metadata.SESSION_START_INFO_TAG
            and value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME):
          content = value.metadata.plugin_data.content
  if content is None:
    return {}
  info = metadata.parse_session_start_info_plugin_data(content)
  out = {}
  for name, value in info.hparams.items():
    kind = value.WhichOneof("kind")
    out[name] = getattr(value, kind)
  return out
