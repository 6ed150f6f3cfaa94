"""TensorBoard event files without TensorFlow, and a one-line progress log.

`Writer(logdir)` writes scalars and PNG images through tensorboard's own EventFileWriter
and protos (tensorboard.compat.proto), which TensorBoard and EventAccumulator read like
files written by tf.summary. `Writer(logdir, enabled=False)` (non-zero processes) writes
nothing and creates no file.

`Progress(total_steps, start_step, every)` logs, via absl logging,
  step 250/1000 (25.0%) | 3.21 steps/s | ETA 3m54s | loss/total 0.0123
with the rate over the last `window` updates (so compile time falls out of it).
"""
import collections
import io
import math
import struct
import time

import numpy as np
from absl import logging
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


def png_info(data):
  """(height, width, channels) from a PNG's header."""
  if not data.startswith(_PNG_SIGNATURE) or len(data) < 26 or data[12:16] != b"IHDR":
    raise ValueError("image bytes are not a PNG (bad signature or header)")
  width, height = struct.unpack(">II", data[16:24])
  return height, width, _PNG_CHANNELS.get(data[25], 3)


class Writer:
  """Scalars and images into an event file in `logdir` (nothing at all if not enabled)."""

  def __init__(self, logdir, enabled=True, flush_secs=30):
    self.logdir = logdir
    self.enabled = enabled
    self._writer = EventFileWriter(logdir, flush_secs=flush_secs) if enabled else None
    self._closed = False

  def _add(self, step, values):
    if self._closed:
      raise RuntimeError(f"summary writer for {self.logdir} is closed")
    if self._writer is None or not values:
      return
    event = event_pb2.Event(wall_time=time.time(), step=int(step),
                            summary=summary_pb2.Summary(value=values))
    self._writer.add_event(event)

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

  def flush(self):
    if self._writer is not None and not self._closed:
      self._writer.flush()

  def close(self):
    """Flush and close; calling it again does nothing."""
    if self._writer is not None and not self._closed:
      self._writer.close()
    self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def format_duration(seconds):
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
  """Logs step/total, steps/s over the recent window, ETA and given metrics every `every` steps.

  update(step, metrics) takes the number of steps done; it logs when at least `every`
  steps passed since the last line, or at the last step, and returns the line (else None).
  """

  def __init__(self, total_steps, start_step=0, every=100, window=20, clock=time.monotonic):
    self.total_steps = int(total_steps)
    self.every = max(1, int(every))
    self._clock = clock
    self._history = collections.deque([(clock(), int(start_step))], maxlen=max(2, window + 1))
    self._last_logged = int(start_step)

  def rate(self):
    """Steps per second over the recent window; NaN before two updates."""
    (t0, s0), (t1, s1) = self._history[0], self._history[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else float("nan")

  def eta(self):
    """Seconds left at the recent rate; NaN if unknown."""
    rate = self.rate()
    step = self._history[-1][1]
    return max(0, self.total_steps - step) / rate if rate > 0 else float("nan")

  def update(self, step, metrics=None):
    step = int(step)
    self._history.append((self._clock(), step))
    if step - self._last_logged < self.every and step < self.total_steps:
      return None
    self._last_logged = step
    parts = [f"step {step}/{self.total_steps} ({100 * step / max(1, self.total_steps):.1f}%)",
             f"{self.rate():.3g} steps/s", f"ETA {format_duration(self.eta())}"]
    parts += [f"{k} {v:.4g}" if isinstance(v, (int, float, np.floating, np.integer))
              else f"{k} {v}" for k, v in (metrics or {}).items()]
    line = " | ".join(parts)
    logging.info("%s", line)
    return line
