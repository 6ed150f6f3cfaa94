"""Batches onto the devices ahead of the step that needs them.

`DevicePrefetch` turns the host pipeline's (step, process-local numpy batch) into (step, global
jax Arrays sharded over the mesh's batch axes) in a background thread, `size` steps ahead, so the
host-to-device copy of the next batches overlaps the running step (as Flax's and big_vision's
prefetch_to_device do). The order is the source's: the data stay a pure function of
(seed, step), whatever the timing. `wait_seconds` is the time the consumer spent blocked waiting
for a batch: the share of the loop's wall time that the chip idles for data.
"""
import queue
import threading
import time

from mtl import sharding


class _End:
  pass


class _Failed:
  def __init__(self, error):
    self.error = error


class DevicePrefetch:
  """Iterator of (step, {name: global jax.Array}) from an iterator of (step, {name: numpy}).

  size >= 1: a thread keeps up to `size` device batches ready; size=0 copies in the calling
  thread. An error in the source or the copy is raised by `next`, in order. `close()` stops the
  thread (a loop that stops early calls it; it is also a context manager).
  """

  def __init__(self, batches, mesh, size=2):
    if size < 0:
      raise ValueError(f"prefetch size={size} must be >= 0 (0: no background thread)")
    self.mesh, self.size, self.wait_seconds = mesh, int(size), 0.0
    self._source = iter(batches)
    self._stop = threading.Event()
    self._thread = None
    if self.size:
      self._queue = queue.Queue(maxsize=self.size)
      self._thread = threading.Thread(target=self._fill, name="mtl-device-prefetch", daemon=True)
      self._thread.start()

  def _to_device(self, item):
    step, local = item
    return step, sharding.to_global(local, self.mesh)

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self):
    try:
      for item in self._source:
        if not self._put(self._to_device(item)):
          return
      self._put(_End())
    except BaseException as error:  # handed to the consumer, raised there in order
      self._put(_Failed(error))

  def __iter__(self):
    return self

  def __next__(self):
    start = time.perf_counter()
    try:
      if self._thread is None:
        return self._to_device(next(self._source))
      item = self._queue.get()
      if isinstance(item, _End):
        self._queue.put(item)  # stays exhausted
        raise StopIteration
      if isinstance(item, _Failed):
        self._queue.put(item)
        raise item.error
      return item
    finally:
      self.wait_seconds += time.perf_counter() - start

  def close(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
