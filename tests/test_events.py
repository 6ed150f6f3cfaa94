"""TensorBoard events written without TensorFlow, read back with EventAccumulator."""
import io
import os

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from mtl import events


def read_events(logdir):
  acc = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def test_scalars_and_images_read_back(tmp_path):
  logdir = str(tmp_path / "events")
  image = np.zeros((6, 10, 3), np.uint8)
  image[:, :5, 0] = 255
  image[2, 7] = (10, 20, 30)
  png = events.encode_png(np.full((4, 5), 128, np.uint8))
  with events.Writer(logdir) as writer:
    writer.scalars(1, {"train/loss": 0.5, "train/lr": np.float32(1e-3)})
    writer.scalars(7, {"train/loss": 0.25})
    writer.image(7, "eval/sample", image)
    writer.image(9, "conflicts/cos_matrix", png)
  acc = read_events(logdir)
  assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr"}
  loss = acc.Scalars("train/loss")
  assert [(e.step, e.value) for e in loss] == [(1, 0.5), (7, 0.25)]
  assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-3)
  sample = acc.Images("eval/sample")
  assert [(e.step, e.height, e.width) for e in sample] == [(7, 6, 10)]
  decoded = np.asarray(Image.open(io.BytesIO(sample[0].encoded_image_string)))
  np.testing.assert_array_equal(decoded, image)
  stored = acc.Images("conflicts/cos_matrix")[0]
  assert (stored.step, stored.height, stored.width) == (9, 4, 5)
  assert stored.encoded_image_string == png


def test_float_images_are_rounded_and_clipped_to_uint8():
  data = events.encode_png(np.array([[[-5.0, 0.4, 254.6]]]))
  assert events.png_info(data) == (1, 1, 3)
  assert np.asarray(Image.open(io.BytesIO(data))).tolist() == [[[0, 0, 255]]]
  with pytest.raises(ValueError, match="image of shape"):
    events.encode_png(np.zeros((2, 2, 2)))
  with pytest.raises(ValueError, match="not a PNG"):
    events.png_info(b"GIF89a....")


def test_disabled_writer_writes_nothing(tmp_path):
  logdir = tmp_path / "events"
  writer = events.Writer(str(logdir), enabled=False)
  writer.scalars(1, {"a": 1.0})
  writer.image(1, "b", np.zeros((2, 2, 3), np.uint8))
  writer.flush()
  writer.close()
  assert not logdir.exists()


def test_writer_errors(tmp_path):
  writer = events.Writer(str(tmp_path))
  with pytest.raises(ValueError, match="'a'='x' is not a number"):
    writer.scalars(1, {"a": "x"})
  writer.close()
  writer.close()  # again: nothing happens
  with pytest.raises(RuntimeError, match="closed"):
    writer.scalars(2, {"a": 1.0})
  assert len(os.listdir(tmp_path)) == 1


def test_a_restart_drops_the_points_an_earlier_attempt_wrote_past_it(tmp_path):
  logdir = str(tmp_path / "events")
  with events.Writer(logdir) as killed:  # checkpointed at 2, killed after logging 3 and 4
    for step in (1, 2, 3, 4):
      killed.scalars(step, {"train/loss": 10.0 + step})
  with events.Writer(logdir) as resumed:  # one file: the order of the events is certain
    resumed.restart(3)
    resumed.scalars(4, {"train/loss": 4.0})
  # the first file is read first (TensorBoard sorts them by name: their creation time)
  first, second = sorted(os.listdir(logdir))
  os.rename(os.path.join(logdir, second), os.path.join(logdir, first + "0"))
  acc = read_events(logdir)
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 11.0), (2, 12.0),
                                                                     (4, 4.0)]
  assert [list(x) for x in events.read_scalars(logdir, "train/loss")] == [[1, 2, 4],
                                                                          [11.0, 12.0, 4.0]]
  disabled = events.Writer(str(tmp_path / "none"), enabled=False)
  disabled.restart(3)
  assert not (tmp_path / "none").exists()


def test_hparams_read_back(tmp_path):
  logdir = str(tmp_path / "events")
  values = {"lr": 3e-3, "seed": 1, "regime": "joint", "tasks": "sr_x2,derain", "fresh": True}
  with events.Writer(logdir) as writer:
    writer.hparams(values, trial_id="run-a", start_time=123.0)
    with pytest.raises(ValueError, match="must be str, bool, int or float"):
      writer.hparams({"tasks": ("sr_x2",)})
  got = events.read_hparams(logdir)
  assert got == {"lr": pytest.approx(3e-3), "seed": 1.0, "regime": "joint",
                 "tasks": "sr_x2,derain", "fresh": True}
  assert events.read_hparams(str(tmp_path / "none")) == {}
  with events.Writer(str(tmp_path / "plain")) as writer:  # events, but no hparams session
    writer.scalars(1, {"train/loss": 1.0})
  assert events.read_hparams(str(tmp_path / "plain")) == {}


def _session_shown(acc):
  """The HParams session TensorBoard's dashboard shows: the session start info of the run's
  summary metadata, as its loader keeps it (the first one read)."""
  from tensorboard.plugins.hparams import metadata
  content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
  info = metadata.parse_session_start_info_plugin_data(content)
  return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def test_the_last_attempts_hparams_are_read_and_shown(tmp_path):
  """A run's attempts record their hparams each (an extended run: total_steps changed):
  read_hparams and TensorBoard's dashboard give the last attempt's."""
  logdir = str(tmp_path / "events")
  for total in (100, 200, 300):  # three attempts, each with a writer of its own
    with events.Writer(logdir) as writer:
      writer.hparams({"total_steps": total, "tasks": "sr_x2"}, trial_id="run")
      writer.scalars(total, {"train/loss": 1.0})
  assert events.read_hparams(logdir) == {"total_steps": 300.0, "tasks": "sr_x2"}
  assert _session_shown(read_events(logdir))["total_steps"] == 300.0
  kept = [n for n in os.listdir(logdir) if n.endswith(events.HPARAMS_SUFFIX)]
  assert len(kept) == 1 and kept[0].startswith(events.EVENT_FILE_PREFIX)  # the earlier replaced
  assert len(os.listdir(logdir)) == 4  # and the three attempts' own files


def test_hparams_in_the_main_files_of_older_runs_read_back_as_the_last_attempts(tmp_path):
  """Runs written before the hparams had a file of their own: each attempt's in its main event
  file. read_hparams reads every file in TensorBoard's order and keeps the last; TensorBoard's
  dashboard keeps the first (its loaders keep a tag's first metadata)."""
  from tensorboard.plugins.hparams import summary_v2
  logdir = str(tmp_path / "events")
  for total in (100, 200):
    with events.Writer(logdir) as writer:
      proto = summary_v2.hparams_pb({"total_steps": total}, trial_id="run", start_time_secs=1.0)
      writer._add(0, list(proto.value))  # as Writer.hparams wrote them then
  first, second = sorted(os.listdir(logdir))  # one second may name both alike but for a count
  os.rename(os.path.join(logdir, second), os.path.join(logdir, first + "0"))
  assert events.read_hparams(logdir) == {"total_steps": 200.0}
  assert _session_shown(read_events(logdir)) == {"total_steps": 100.0}


def test_a_full_disk_raises_at_the_next_write_and_the_write_thread_prints_nothing(
    tmp_path, monkeypatch):
  """The write thread's ENOSPC (a real one: its file is /dev/full) printed a traceback of its
  own before the run's one-line stop; the error is raised by the next write instead."""
  import errno
  import threading
  import time
  if not os.path.exists("/dev/full"):
    pytest.skip("needs /dev/full")
  seen = []  # what threading prints through its hook
  monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
  logdir = tmp_path / "events"
  writer = events.Writer(str(logdir))
  (path,) = logdir.iterdir()
  path.unlink()
  path.symlink_to("/dev/full")
  writer.scalars(1, {"train/loss": 1.0})
  deadline = time.monotonic() + 30
  with pytest.raises(OSError) as error:
    while time.monotonic() < deadline:  # the thread fails while the loop goes on
      writer.scalars(2, {"train/loss": 1.0})
      time.sleep(0.05)
  assert error.value.errno == errno.ENOSPC
  assert seen == []
  writer.close()  # the error was raised: close does not raise it again
  # One that is never written again raises it at close.
  other = events.Writer(str(tmp_path / "other"))
  (path,) = (tmp_path / "other").iterdir()
  path.unlink()
  path.symlink_to("/dev/full")
  other.scalars(1, {"train/loss": 1.0})
  with pytest.raises(OSError, match="No space left"):
    other.close()
  assert seen == []
