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
