"""The training input pipeline: shapes per task, determinism, process shards, schedules, real
sub-windows, streak layers, the threaded iterator."""
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mtl import tasks
from mtl.data import folder, pipeline, sources

TASKS = ("denoise_30", "sr_x2", "sr_x3", "derain")


@pytest.fixture(scope="module")
def images():
  """Distinct random images (every window unique), one smaller than the SR x3 crop."""
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, shape, dtype=np.uint8)
          for shape in ((200, 230, 3), (160, 150, 3), (150, 210, 3), (100, 120, 3))]


def _specs(names=TASKS):
  return tasks.get_all(names)


def _batch(images, step=0, seed=0, batch_size=4, **kwargs):
  return pipeline.batch_for_step(images, _specs(kwargs.pop("names", TASKS)), 48, batch_size, seed,
                                 step, **kwargs)


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_shapes_and_dtype_per_task(images):
  batch = _batch(images)
  assert list(batch) == list(TASKS)
  assert batch["denoise_30"].shape == (4, 48, 48, 3)
  assert batch["sr_x2"].shape == (4, 96, 96, 3)
  assert batch["sr_x3"].shape == (4, 144, 144, 3)
  assert batch["derain"].shape == (4, 48, 48, 3)
  assert all(v.dtype == np.uint8 for v in batch.values())


def test_deterministic_in_seed_and_step(images):
  _assert_batches_equal(_batch(images, step=3), _batch(images, step=3))
  for other in (_batch(images, step=4), _batch(images, step=3, seed=1)):
    for name in TASKS:
      assert not np.array_equal(_batch(images, step=3)[name], other[name])


def test_tasks_are_keyed_by_name_not_position(images):
  joint = _batch(images, step=2)
  alone = _batch(images, step=2, names=("sr_x2",))
  reordered = _batch(images, step=2, names=("derain", "sr_x2"))
  np.testing.assert_array_equal(joint["sr_x2"], alone["sr_x2"])
  np.testing.assert_array_equal(joint["sr_x2"], reordered["sr_x2"])


def test_process_shards_union_is_the_global_batch(images):
  full = _batch(images, step=5, batch_size=8)
  shards = [_batch(images, step=5, batch_size=8, process_index=p, process_count=2) for p in (0, 1)]
  for name in TASKS:
    assert shards[0][name].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([s[name] for s in shards]), full[name])
  with pytest.raises(ValueError, match="data.batch_size=6 must be a positive multiple of the "
                                       "process count 4"):
    _batch(images, batch_size=6, process_index=0, process_count=4)


def test_the_probe_batch_is_fresh_samples_of_the_same_step(images):
  """probe_size: the samples batch_size, batch_size + 1, ... of the step, under 'probe:' keys;
  the training entries unchanged, and process shards still concatenate to the global batch."""
  plain = _batch(images, step=3, batch_size=4)
  both = _batch(images, step=3, batch_size=4, probe_size=6)
  longer = _batch(images, step=3, batch_size=10)
  train, probe = pipeline.split_probe(both)
  _assert_batches_equal(train, plain)
  assert probe.keys() == plain.keys()
  for name in TASKS:
    np.testing.assert_array_equal(probe[name], longer[name][4:])  # never trained on
  shards = [_batch(images, step=3, batch_size=4, probe_size=6, process_index=p, process_count=2)
            for p in (0, 1)]
  for name in TASKS:
    np.testing.assert_array_equal(np.concatenate([s["probe:" + name] for s in shards]),
                                  probe[name])


def test_one_schedule_picks_one_task_deterministically(images):
  chosen = []
  for step in range(40):
    batch = _batch(images, step=step, schedule="one")
    assert len(batch) == 1
    name = next(iter(batch))
    assert name == TASKS[pipeline.task_for_step(0, step, len(TASKS))]
    _assert_batches_equal(batch, _batch(images, step=step, schedule="one"))
    np.testing.assert_array_equal(batch[name], _batch(images, step=step)[name])
    chosen.append(name)
  assert set(chosen) == set(TASKS)
  with pytest.raises(ValueError, match="schedule='some'; valid: all, one"):
    _batch(images, schedule="some")


def _dihedral(window):
  flips = (window, window[:, ::-1])
  return [np.rot90(w, k) for w in flips for k in range(4)]


def _locate(crop, image):
  """(top, left) of the window of `image` that `crop` is, up to flip / 90-degree rotation."""
  side = crop.shape[0]
  for candidate in _dihedral(crop):   # one of these undoes the crop's transform
    for top, left in np.argwhere((image == candidate[0, 0]).all(axis=-1)):
      if np.array_equal(image[top:top + side, left:left + side], candidate):
        return top, left
  return None


def test_crops_are_real_sub_windows_up_to_flip_and_rotation(images):
  batch = _batch(images[:3], step=1, batch_size=6, names=("denoise_30", "sr_x2"))
  found = 0
  for crops in batch.values():
    for crop in crops:
      found += any(_locate(crop, image) is not None for image in images[:3])
  assert found == 12
  assert _locate(images[3][:48, :48], images[0]) is None   # the check can fail


def test_small_images_are_reflect_padded(images):
  tiny = [np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)]
  batch = _batch(tiny, names=("sr_x2",))
  assert batch["sr_x2"].shape == (4, 96, 96, 3)
  padded = np.pad(tiny[0], [(0, 66), (0, 56), (0, 0)], mode="symmetric")
  for crop in batch["sr_x2"]:
    assert any(np.array_equal(crop, c) for c in _dihedral(padded[:96, :96]))


def test_real_streak_layers(tmp_path, images):
  rng = np.random.default_rng(4)
  grey = rng.integers(0, 256, (70, 90), dtype=np.uint8)
  Image.fromarray(grey).save(tmp_path / "rainstreak-1.png")
  Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(tmp_path / "rainstreak-2.png")
  Image.fromarray(grey).save(tmp_path / "norain-1.png")   # not a streak layer
  layers = pipeline.load_streak_layers(str(tmp_path))
  assert len(layers) == 2 and all(l.dtype == np.uint8 and l.shape == (70, 90) for l in layers)
  np.testing.assert_array_equal(layers[1], grey)
  with_streaks = _batch(images, streaks=layers)
  assert sorted(with_streaks) == sorted(TASKS + ("derain:streaks",))
  streaks = with_streaks["derain:streaks"]
  assert streaks.shape == (4, 48, 48) and streaks.dtype == np.uint8
  for crop in streaks:
    assert _locate(crop[..., None], grey[..., None]) is not None
  # The clean crops do not depend on whether streaks are drawn.
  _assert_batches_equal({k: v for k, v in with_streaks.items() if ":" not in k}, _batch(images))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no rain streak layers"):
    pipeline.load_streak_layers(str(tmp_path / "empty"))


def test_train_batches_match_batch_for_step_and_resume(images):
  specs = _specs()
  stream = list(pipeline.train_batches(images, specs, 48, 4, 7, start_step=0, num_steps=6,
                                       num_threads=2, prefetch=3))
  assert [step for step, _ in stream] == list(range(6))
  for step, batch in stream:
    _assert_batches_equal(batch, pipeline.batch_for_step(images, specs, 48, 4, 7, step))
  resumed = pipeline.train_batches(images, specs, 48, 4, 7, start_step=4, num_steps=2)
  for (step, batch), (_, expected) in zip(resumed, stream[4:]):
    _assert_batches_equal(batch, expected)
  forever = pipeline.train_batches(images, specs, 48, 4, 7, start_step=100, num_threads=0)
  assert [next(forever)[0] for _ in range(3)] == [100, 101, 102]
  with pytest.raises(ValueError, match="multiple of the process count 3"):
    pipeline.train_batches(images, specs, 48, 4, 7, process_count=3)


def test_a_step_offset_draws_the_later_steps_samples_under_the_runs_own_steps(images):
  """data.step_offset P: the run's step k is a scratch run's step k + P (crops, streaks, the
  probe batch; the probe schedule stays the run's); P = 0 is batch_for_step's step k itself."""
  specs, probe_every = _specs(), lambda step: 2 if step % 2 == 0 else 0
  offset = pipeline.train_batches(images, specs, 48, 4, 7, start_step=0, num_steps=4,
                                  num_threads=0, probe_size=probe_every, step_offset=5)
  scratch = dict(pipeline.train_batches(images, specs, 48, 4, 7, start_step=0, num_steps=9,
                                        num_threads=2, probe_size=lambda step: 2))
  for step, batch in offset:
    expected = scratch[step + 5] if probe_every(step) else pipeline.split_probe(
        scratch[step + 5])[0]
    _assert_batches_equal(batch, expected)
  (step, resumed), = pipeline.train_batches(images, specs, 48, 4, 7, start_step=2, num_steps=1,
                                            num_threads=0, step_offset=5)  # resumed at step 2
  assert step == 2
  _assert_batches_equal(resumed, pipeline.split_probe(scratch[7])[0])
  for step, batch in pipeline.train_batches(images, specs, 48, 4, 7, num_steps=2, num_threads=0,
                                            step_offset=0):
    _assert_batches_equal(batch, pipeline.batch_for_step(images, specs, 48, 4, 7, step))
  with pytest.raises(ValueError, match="step_offset=-1 must be >= 0"):
    pipeline.train_batches(images, specs, 48, 4, 7, step_offset=-1)


def test_photos_source_feeds_the_pipeline_and_throughput(tmp_path):
  data_cfg = ml_collections.ConfigDict({"source": "photos", "tfds_dir": str(tmp_path)})
  photos = sources.open_images(data_cfg, "train")
  specs = _specs(("denoise_30", "sr_x2", "derain"))
  batch = pipeline.batch_for_step(photos, specs, 48, 8, 0, 0)
  assert {k: v.shape for k, v in batch.items()} == {
      "denoise_30": (8, 48, 48, 3), "sr_x2": (8, 96, 96, 3), "derain": (8, 48, 48, 3)}
  rate = pipeline.measure_throughput(photos, specs, 48, 8, num_steps=10, warmup_steps=2)
  assert rate > 100   # crops per second; thousands on a laptop core


def _paired_folder(root, layout="lol", count=3):
  """A paired folder whose degraded image is 255 - clean (any misalignment shows), sides unequal."""
  rng = np.random.default_rng(7)
  for i in range(1, count + 1):
    clean = rng.integers(0, 256, (70 + 10 * i, 90, 3), dtype=np.uint8)
    if layout == "lol":
      names = (root / "low" / f"{i}.png", root / "high" / f"{i}.png")
    else:   # RESIDE: one clear image, hazy copies named <id>_<A>_<beta>
      names = (root / "hazy" / f"{i:04d}_0.8_0.1.png", root / "clear" / f"{i:04d}.png")
    for path, image in zip(names, (255 - clean, clean)):
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(path)
  return str(root)


@pytest.mark.parametrize("layout", ["lol", "reside"])
def test_paired_tasks_get_aligned_clean_and_degraded_crops(images, tmp_path, layout):
  names = ("lowlight", "dehaze", "denoise_30")
  pairs = pipeline.load_pairs(f"lowlight={_paired_folder(tmp_path / 'a', layout)},"
                              f"dehaze={_paired_folder(tmp_path / 'b', layout)}", _specs(names))
  assert sorted(pairs) == ["dehaze", "lowlight"] and len(pairs["dehaze"]) == 3
  batch = _batch(images, names=names, pairs=pairs, batch_size=8)
  assert set(batch) == {"lowlight", "lowlight:input", "dehaze", "dehaze:input", "denoise_30"}
  for name in ("lowlight", "dehaze"):
    assert batch[name].shape == batch[f"{name}:input"].shape == (8, 48, 48, 3)
    # One window, flip and rotation for both: the degraded crop is exactly 255 - the clean one.
    np.testing.assert_array_equal(batch[f"{name}:input"], 255 - batch[name])
  assert len({batch["dehaze"][i].tobytes() for i in range(8)}) == 8   # random windows
  _assert_batches_equal(batch, _batch(images, names=names, pairs=pairs, batch_size=8))
  # The same crops through the threaded iterator, and per process shard.
  (_, threaded), = pipeline.train_batches(images, _specs(names), 48, 8, 0, num_steps=1,
                                          pairs=pairs, num_threads=2)
  _assert_batches_equal(batch, threaded)
  half = _batch(images, names=names, pairs=pairs, batch_size=8, process_index=1, process_count=2)
  np.testing.assert_array_equal(half["dehaze:input"], batch["dehaze:input"][4:])


def test_a_paired_crop_is_the_crop_of_the_pair_stacked_channel_wise():
  """sample_pair cuts the clean and the degraded image apart with one drawn window, copying only
  the windows: the crops of the two stacked (its former definition), so a seed draws as before."""
  rng = np.random.default_rng(9)
  pairs = [tuple(rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(2))
           for shape in ((70, 90), (30, 60), (48, 48), (100, 40))]

  def stacked(seed, step, index, side):   # the former sample_pair
    draw = np.random.default_rng([seed, step, tasks.task_id("dehaze", bits=32), index, 1])
    degraded, clean = pairs[int(draw.integers(len(pairs)))]
    both = np.concatenate([clean, degraded], axis=-1)
    both = np.pad(both, [(0, max(0, side - both.shape[0])), (0, max(0, side - both.shape[1])),
                         (0, 0)], mode="symmetric")
    top = int(draw.integers(both.shape[0] - side + 1))
    left = int(draw.integers(both.shape[1] - side + 1))
    window = both[top:top + side, left:left + side]
    flip, rotations = int(draw.integers(2)), int(draw.integers(4))
    window = np.rot90(window[:, ::-1] if flip else window, rotations)
    return window[..., :3], window[..., 3:]

  for seed in (0, 1, 7):
    for index in range(16):
      for side in (48, 64):
        got = pipeline.sample_pair(pairs, seed, 3, "dehaze", index, side)
        for crop, expected in zip(got, stacked(seed, 3, index, side)):
          np.testing.assert_array_equal(crop, expected)


def test_tiling_a_folder_changes_no_crop_and_images_are_drawn_uniformly(tmp_path):
  """data.folder_tile is a pure speed-up: a tiled folder serves each crop from the tiles holding
  it (two or four where it straddles a seam), so every crop, and each image's share of them,
  is what the whole images give; drawing a stored tile instead weighted images by tile count."""
  rng = np.random.default_rng(5)
  sizes = ((40, 40), (65, 65), (70, 150), (130, 130), (30, 200))
  (tmp_path / "imgs").mkdir()
  for k, (h, w) in enumerate(sizes):   # red 50 k .. 50 k + 49 tells a crop's image
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[..., 0] = 50 * k + rng.integers(0, 50, (h, w))
    Image.fromarray(image).save(tmp_path / "imgs" / f"{k}.png")
  opened = {tile: sources.open_images(ml_collections.ConfigDict(dict(
      source="folder", folder=str(tmp_path / "imgs"), tfds_dir=str(tmp_path / "tfds"),
      folder_tile=tile)), "train") for tile in (0, 64)}
  tiles = [len(folder.tile_origins(h, 64)) * len(folder.tile_origins(w, 64)) for h, w in sizes]
  assert tiles == [1, 4, 6, 9, 4] and len(opened[64].records) == 24 and len(opened[64]) == 5
  for step in range(3):   # crops of 48 and 96 (larger than a tile)
    _assert_batches_equal(_batch(opened[0], step, names=("denoise_30", "sr_x2"), batch_size=8),
                          _batch(opened[64], step, names=("denoise_30", "sr_x2"), batch_size=8))
  n, k = 2000, len(sizes)
  crops = [pipeline.sample_crop(opened[64], 3, 0, "denoise_30", i, 48)[0] for i in range(n)]
  counts = np.bincount([crop[..., 0].min() // 50 for crop in crops], minlength=k)
  # Drawn uniformly, each count is Binomial(n, 1/k): sd sqrt(n (1/k)(1 - 1/k)) = 17.9. Within 5 sd
  # a false alarm has probability < 6e-7 per image for any seed; the tile-count weighting moves
  # the 1-tile image's mean by n/k - n/24 = 317 (over 3 x 5 sd), which this tolerance catches.
  tolerance = 5 * np.sqrt(n / k * (1 - 1 / k))
  assert np.abs(counts - n / k).max() < tolerance, counts
  assert np.abs(n * np.array(tiles) / sum(tiles) - n / k).max() > 3 * tolerance


def test_a_paired_folder_with_a_misfit_pair_is_refused_before_anything_is_written(tmp_path):
  from experiments import tiny
  from mtl import train
  folder = _paired_folder(tmp_path / "lol", count=4)
  for i, height in ((2, 89), (4, 1)):  # an odd margin, then a larger degraded image: both bad
    Image.fromarray(np.zeros((height, 90, 3), np.uint8)).save(tmp_path / "lol" / "low" / f"{i}.png")
  config = tiny.get_config("lowlight")
  config.regime, config.data.pairs, config.mesh.data = "scratch", f"lowlight={folder}", 1
  workdir = tmp_path / "run"
  message = (f"data.pairs: lowlight={folder}: {tmp_path}/lol/low/2.png is 89 x 90 (height x "
             f"width) but its clean image {tmp_path}/lol/high/2.png is 90 x 90; a clean image ")
  with pytest.raises(ValueError, match="^" + re.escape(message)):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  # sizes fixed, two images cut short (a copy that stopped): their headers read, their pixels do
  # not; found when a batch first drew them, at any step. Now named before anything is written
  for i in (2, 4):
    Image.fromarray(np.zeros((90, 90, 3), np.uint8)).save(tmp_path / "lol" / "low" / f"{i}.png")
  for name in ("low/1.png", "high/3.png"):
    whole = (tmp_path / "lol" / name).read_bytes()
    (tmp_path / "lol" / name).write_bytes(whole[:len(whole) // 2])
  cut = "the file ends before its image data does (no IEND chunk: cut short)"
  message = (f"data.pairs: lowlight={folder}: cannot read 2 image(s) of {folder} (fix or remove "
             f"them; nothing is trained): {tmp_path}/lol/high/3.png: {cut}; "
             f"{tmp_path}/lol/low/1.png: {cut}")
  with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_load_pairs_errors(tmp_path):
  folder = _paired_folder(tmp_path / "lol")
  with pytest.raises(ValueError, match="'dehaze' names none of the tasks denoise_30, sr_x2"):
    pipeline.load_pairs(f"dehaze={folder}", _specs(("denoise_30", "sr_x2")))
  with pytest.raises(ValueError, match="task 'sr_x2' changes the image size"):
    pipeline.load_pairs(f"sr={folder}", _specs(("denoise_30", "sr_x2")))
  with pytest.raises(ValueError, match="data.pairs entry 'dehaze' is not valid; use TASK=PATH"):
    pipeline.load_pairs("dehaze", _specs(("dehaze",)))
  with pytest.raises(FileNotFoundError, match="paired folder .*nope does not exist"):
    pipeline.load_pairs(f"dehaze={tmp_path / 'nope'}", _specs(("dehaze",)))
  assert pipeline.load_pairs("", _specs(("dehaze",))) == {}


def _mesh(devices):
  from mtl import sharding
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=devices, fsdp=1)))


@pytest.mark.parametrize("size", [0, 2])
def test_device_prefetch_keeps_order_values_and_the_batch_sharding(images, size):
  from mtl import sharding
  from mtl.data import prefetch
  mesh = _mesh(4)
  source = list(pipeline.train_batches(images, ("denoise_30", "sr_x2"), 48, 4, seed=3,
                                       start_step=5, num_steps=6, num_threads=2))
  with prefetch.DevicePrefetch(iter(source), mesh, size=size) as batches:
    got = list(batches)
    assert batches.wait_seconds >= 0
  assert [step for step, _ in got] == list(range(5, 11))
  for (_, local), (_, global_batch) in zip(source, got):
    assert set(global_batch) == set(local)
    for name, array in global_batch.items():
      assert array.sharding == sharding.batch_sharding(mesh)
      np.testing.assert_array_equal(np.asarray(array), local[name])


def test_device_prefetch_raises_the_sources_error_in_order_and_stops_early(images):
  from mtl.data import prefetch

  def failing():
    yield 0, pipeline.batch_for_step(images, ("sr_x2",), 48, 2, 0, 0)
    raise OSError("disk gone")
  batches = prefetch.DevicePrefetch(failing(), _mesh(1), size=2)
  assert next(batches)[0] == 0
  with pytest.raises(OSError, match="disk gone"):
    next(batches)
  endless = prefetch.DevicePrefetch(pipeline.train_batches(images, ("sr_x2",), 48, 2, 0,
                                                           num_threads=1), _mesh(1), size=2)
  assert next(endless)[0] == 0
  endless.close()  # a loop that stops early: the thread ends
  assert not endless._thread.is_alive()
  with pytest.raises(ValueError, match="prefetch size=-1"):
    prefetch.DevicePrefetch(iter(()), _mesh(1), size=-1)
