"""TFDS builders and sources: the embedded photographs, a user folder, a prepared TFDS dataset by
name; built offline into tmp dirs and read back."""
import glob
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mtl.data import folder, photos, sources


def _data_cfg(tfds_dir, **fields):
  defaults = dict(source="photos", folder="", tfds_name="", tfds_split="train")
  return ml_collections.ConfigDict({**defaults, "tfds_dir": str(tfds_dir), **fields})


def _records(builder, split):
  return {r["name"].decode(): r["image"] for r in builder.as_data_source(split)}


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
  tfds_dir = tmp_path_factory.mktemp("tfds")
  sources.photos_builder(str(tfds_dir))
  return tfds_dir


# ----------------------------------------------------------------------------- photos


def test_photos_splits_are_fixed_disjoint_and_complete(photos_dir):
  builder = sources.photos_builder(str(photos_dir))
  train, test = _records(builder, "train"), _records(builder, "test")
  validation = _records(builder, "validation")
  assert sorted(test) == ["chelsea", "coffee", "rocket"]
  assert sorted(validation) == ["motorcycle_left", "motorcycle_right"]
  assert sorted(train) == ["astronaut", "hubble_deep_field", "ihc", "retina"]
  split_of = {n: s for s, names in (("train", train), ("validation", validation),
                                    ("test", test)) for n in names}
  for a, b in photos.STEREO_TWINS:  # two views of one scene never straddle splits
    assert split_of[a] == split_of[b]
  assert set(train) | set(test) | set(validation) == set(photos.PHOTO_FILES)
  for image in list(train.values()) + list(test.values()):
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert train["astronaut"].shape == (512, 512, 3)
  assert test["chelsea"].shape == (300, 451, 3)
  np.testing.assert_array_equal(train["astronaut"], np.asarray(Image.open(
      photos.photo_path("astronaut")).convert("RGB")))
  assert os.path.isdir(photos_dir / "mtl_photos" / "1.3.0")


def test_open_images_photos_reuses_the_build_and_caches(photos_dir):
  version_dir = photos_dir / "mtl_photos" / "1.3.0"
  built_at = os.stat(version_dir).st_mtime_ns
  images = sources.open_images(_data_cfg(photos_dir), "train")
  assert os.stat(version_dir).st_mtime_ns == built_at   # reused, not rebuilt
  assert len(images) == len(photos.TRAIN_PHOTOS) == 4
  first = images[0]
  assert first is images[0]                              # decoded once, kept in memory
  assert first.dtype == np.uint8 and first.shape[-1] == 3 and not first.flags.writeable
  uncached = sources.open_images(_data_cfg(photos_dir), "train", cache_mb=0)
  assert uncached[0] is not uncached[0]
  np.testing.assert_array_equal(uncached[0], first)
  assert len(sources.open_images(_data_cfg(photos_dir), "test")) == 3


def test_tfds_source_reads_a_prepared_dataset_by_name(photos_dir):
  by_name = sources.open_images(_data_cfg(photos_dir, source="tfds", tfds_name="mtl_photos",
                                          tfds_split="test"), "train")
  embedded = sources.open_images(_data_cfg(photos_dir), "test")
  assert len(by_name) == len(embedded) == 3
  for i in range(3):
    np.testing.assert_array_equal(by_name[i], embedded[i])


def test_tfds_source_errors(tmp_path, photos_dir):
  with pytest.raises(FileNotFoundError, match="not prepared in .*tfds build mtl_photos"):
    sources.open_images(_data_cfg(tmp_path, source="tfds", tfds_name="mtl_photos"))
  with pytest.raises(ValueError, match="'no_such_dataset_xyz' is neither"):
    sources.open_images(_data_cfg(tmp_path, source="tfds", tfds_name="no_such_dataset_xyz"))
  with pytest.raises(ValueError, match="split 'val' not in photos; its splits: test, train, "
                                       "validation"):
    sources.open_images(_data_cfg(photos_dir), "val")


def test_unknown_source_lists_the_valid_ones(tmp_path):
  expected = "data.source='imagenet'; valid sources: photos, folder, tfds"
  with pytest.raises(ValueError, match=expected):
    sources.open_images(_data_cfg(tmp_path, source="imagenet"))


def test_tfds_dir_resolution(monkeypatch):
  monkeypatch.delenv("MTL_TFDS_DIR", raising=False)
  assert sources.tfds_dir(_data_cfg("/data/tfds")) == "/data/tfds"
  assert sources.tfds_dir(_data_cfg("")) == os.path.expanduser("~/.cache/mtl/tensorflow_datasets")
  monkeypatch.setenv("MTL_TFDS_DIR", "/scratch/tfds")
  assert sources.tfds_dir(_data_cfg("")) == "/scratch/tfds"
  assert sources.tfds_dir(None) == "/scratch/tfds"


def test_two_processes_building_at_once_agree(tmp_path):
  code = ("import sys; from mtl.data import benchmarks; "
          "print(','.join(n for n, _ in benchmarks.photos_testset("
          "__import__('ml_collections').ConfigDict({'tfds_dir': sys.argv[1]}))))")
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "chelsea,coffee,rocket"
  assert os.listdir(tmp_path / "mtl_photos") == ["1.3.0"]   # no leftover incomplete dirs


# ----------------------------------------------------------------------------- folder


def _write_folder(root):
  """A nested folder of formats and modes; returns {relative name: expected RGB array}."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (30, 20), dtype=np.uint8)
  rgba = rng.integers(0, 256, (25, 35, 4), dtype=np.uint8)
  smooth = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 64, 3))
  (root / "sub" / "deeper").mkdir(parents=True)
  Image.fromarray(rgb).save(root / "a.png")
  Image.fromarray(grey).save(root / "sub" / "grey.png")
  Image.fromarray(rgba).save(root / "sub" / "alpha.png")
  Image.fromarray(rgb).save(root / "sub" / "deeper" / "c.bmp")
  Image.fromarray(np.ascontiguousarray(smooth)).save(root / "sub" / "photo.JPG", quality=95)
  (root / "notes.txt").write_text("not an image")
  (root / ".hidden.png").write_bytes(b"AppleDouble junk")
  return {"a.png": rgb, "sub/grey.png": np.repeat(grey[..., None], 3, -1),
          "sub/alpha.png": rgba[..., :3], "sub/deeper/c.bmp": rgb, "sub/photo.JPG": smooth}


def test_folder_builds_recursively_with_formats_grey_and_alpha(tmp_path):
  expected = _write_folder(tmp_path / "imgs")
  builder = sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), tile=0)
  records = _records(builder, "train")
  assert sorted(records) == sorted(expected)
  for name, image in records.items():
    assert image.dtype == np.uint8 and image.shape == expected[name].shape
    if name.endswith(".JPG"):
      assert np.abs(image.astype(int) - expected[name]).max() <= 8   # lossy
    else:
      np.testing.assert_array_equal(image, expected[name])
  config = builder.builder_config
  assert config.description == str(tmp_path / "imgs")
  assert config.name.startswith("imgs_") and len(config.name) == len("imgs_") + 8
  assert os.path.isdir(tmp_path / "tfds" / "mtl_folder" / config.name / "1.0.0")


def test_folder_tiles_cover_each_image(tmp_path):
  image = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
  (tmp_path / "imgs").mkdir()
  Image.fromarray(image).save(tmp_path / "imgs" / "big.png")
  builder = sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), tile=128)
  records = _records(builder, "train")
  assert folder.tile_origins(300, 128) == [0, 86, 172] and folder.tile_origins(200, 128) == [0, 72]
  assert len(records) == 6
  rebuilt = np.zeros_like(image)
  for name, tile in records.items():
    top, left = map(int, name.split("@")[1].split(","))
    assert tile.shape == (128, 128, 3)
    rebuilt[top:top + 128, left:left + 128] = tile
  np.testing.assert_array_equal(rebuilt, image)


def test_a_folder_cache_past_the_in_memory_limit_spills_to_disk_and_reads_the_same(
    tmp_path, monkeypatch):
  # past 1 GB of tiles TFDS's shuffler spills to bucket files through tf.io.gfile: without
  # TensorFlow (not a dependency) a DIV2K-sized folder failed with a traceback
  from tensorflow_datasets.core import shuffle
  rng = np.random.default_rng(3)
  (tmp_path / "imgs").mkdir()
  for k in range(5):
    Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(
        tmp_path / "imgs" / f"{k}.png")
  kept = sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "in_memory"), tile=32)
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 10_000)  # a limit the 45 tiles pass
  spilled = sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "spilled"), tile=32)
  a, b = (list(builder.as_data_source("train")) for builder in (kept, spilled))
  assert len(a) == len(b) == 5 * 3 * 3  # 3 x 3 tiles an image
  for x, y in zip(a, b):  # one order (what the tile layout reads by), the same tiles
    assert x["name"] == y["name"]
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not glob.glob(str(tmp_path / "spilled" / "**" / "bucket_*"), recursive=True)


def test_a_tiled_image_reads_any_window_from_the_tiles_that_hold_it():
  image = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
  rows, cols = folder.tile_origins(70, 32), folder.tile_origins(90, 32)
  assert rows == [0, 19, 38] and cols == [0, 29, 58]
  stored = {(i, j): image[top:top + 32, left:left + 32] for i, top in enumerate(rows)
            for j, left in enumerate(cols)}
  reads = []
  tiled = folder.TiledImage(70, 90, 32, lambda i, j: reads.append((i, j)) or stored[i, j])
  assert tiled.shape == image.shape
  np.testing.assert_array_equal(np.asarray(tiled), image)
  for top in range(70 - 20 + 1):
    for left in range(90 - 20 + 1):
      np.testing.assert_array_equal(tiled[top:top + 20, left:left + 20],
                                    image[top:top + 20, left:left + 20])
  np.testing.assert_array_equal(tiled[60:80, 80:100], image[60:80, 80:100])  # cut at the edge
  reads.clear()
  assert np.shares_memory(tiled[20:40, 1:21], stored[1, 0]) and reads == [(1, 0)]  # one tile
  reads.clear()
  tiled[20:40, 25:45]   # straddles column 32: each part from the last tile starting before it
  assert reads == [(1, 0), (1, 1)]
  with pytest.raises(TypeError, match="reads windows"):
    tiled[::2, :]


def test_a_tiled_folder_serves_whole_images_numbered_as_untiled(tmp_path, monkeypatch):
  rng = np.random.default_rng(3)
  sizes = ((40, 50), (65, 65), (70, 150), (130, 64), (64, 64), (20, 300))
  (tmp_path / "imgs").mkdir()
  for k, shape in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(
        tmp_path / "imgs" / f"{k}.png")

  def open_images(tile, split="train", **fields):
    return sources.open_images(_data_cfg(tmp_path / "tfds", source="folder", folder_tile=tile,
                                         folder=str(tmp_path / "imgs"), **fields), split)

  for split, fraction, count in (("train", 0.0, 6), ("train", 0.3, 4), ("validation", 0.3, 2)):
    whole, tiled = (open_images(t, split, validation_fraction=fraction) for t in (0, 64))
    assert len(tiled) == len(whole) == count
    for k in range(count):   # image k is the same image: a seed draws the same crops
      np.testing.assert_array_equal(np.asarray(tiled[k]), whole[k])
  tiled = open_images(64)
  # A cache built before the image sizes were stored: they come from the image headers.
  builder = sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), tile=64)
  path = os.path.join(builder.data_dir, "metadata.json")
  with open(path) as f:
    metadata = json.load(f)
  assert metadata[folder.SIZES_KEY] == {"train": [list(size) for size in sizes]}
  with open(path, "w") as f:
    json.dump({k: v for k, v in metadata.items() if k != folder.SIZES_KEY}, f)
  headers, image_size = [], folder.image_size
  monkeypatch.setattr(folder, "image_size", lambda p: headers.append(p) or image_size(p))
  older = open_images(64, cache_mb=0)
  assert len(headers) == 6
  for k in range(6):
    np.testing.assert_array_equal(np.asarray(older[k]), np.asarray(tiled[k]))
  # A tile not where the layout looks for it is named, not read as another image's pixels.
  older.layout.records[:] = older.layout.records[::-1]
  with pytest.raises(ValueError, match=r"record \d+ is '.*', not the tile '.*' expected there"):
    [np.asarray(older[k]) for k in range(6)]
  with pytest.raises(ValueError, match="a slice of the records would cut images' tiles apart"):
    open_images(64, "train[:50%]")


def test_folder_validation_hold_out_is_deterministic(tmp_path):
  (tmp_path / "imgs").mkdir()
  for i in range(10):
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "imgs" / f"{i:02d}.png")
  builder = sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), 0.2)
  train, validation = _records(builder, "train"), _records(builder, "validation")
  assert len(train) == 8 and len(validation) == 2 and not set(train) & set(validation)
  names = sorted(f"{i:02d}.png" for i in range(10))
  assert folder.split_validation(names[::-1], 0.2)[1] == sorted(validation)
  # The hold-out config is keyed apart from the whole-folder one.
  whole = sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
  assert whole.builder_config.name != builder.builder_config.name
  assert len(_records(whole, "train")) == 10


def test_two_folders_do_not_collide(tmp_path):
  for side, name in ((8, "x/imgs"), (9, "y/imgs")):
    (tmp_path / name).mkdir(parents=True)
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(tmp_path / name / "a.png")
  shapes = []
  for name in ("x/imgs", "y/imgs"):
    cfg = _data_cfg(tmp_path / "tfds", source="folder", folder=str(tmp_path / name))
    shapes.append(sources.open_images(cfg)[0].shape)
  assert shapes == [(8, 8, 3), (9, 9, 3)]


def test_folder_errors_name_the_path(tmp_path):
  tfds_dir = str(tmp_path / "tfds")
  missing = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=f"^image folder {missing} does not exist"):
    sources.folder_builder(missing, tfds_dir)
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "readme.txt").write_text("no images here")
  with pytest.raises(ValueError, match=f"^image folder {tmp_path / 'empty'} holds no images"):
    sources.folder_builder(str(tmp_path / "empty"), tfds_dir)
  (tmp_path / "bad").mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "bad" / "good.png")
  (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG not really")
  (tmp_path / "bad" / "empty.jpg").write_bytes(b"")
  with pytest.raises(ValueError) as error:  # every bad one at once: it named the first only
    sources.folder_builder(str(tmp_path / "bad"), tfds_dir)
  assert str(error.value) == (
      f"cannot read 2 image(s) of {tmp_path / 'bad'} (fix or remove them; the dataset is not "
      f"built): {tmp_path / 'bad' / 'broken.png'}: not a PNG, JPEG, BMP, TIFF, WEBP image, "
      f"whatever its name says; {tmp_path / 'bad' / 'empty.jpg'}: the file is empty")
  (tmp_path / "bad" / "broken.png").unlink()
  (tmp_path / "bad" / "empty.jpg").unlink()
  # headers whole, data cut short: found as the images are read, every one of them too
  pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
  for name in ("short1.png", "short2.png"):
    _png(tmp_path / "bad" / name, pixels, rows=10)
  with pytest.raises(ValueError) as error:
    sources.open_images(_data_cfg(tfds_dir, source="folder", folder=str(tmp_path / "bad")))
  assert str(error.value).startswith(f"cannot read 2 image(s) of {tmp_path / 'bad'} (fix or "
                                     f"remove them; the dataset is not built): "
                                     f"{tmp_path / 'bad' / 'short1.png'}: its image data ends")
  assert f"; {tmp_path / 'bad' / 'short2.png'}: its image data ends early" in str(error.value)
  for name in ("short1.png", "short2.png"):
    (tmp_path / "bad" / name).unlink()
  assert len(sources.open_images(_data_cfg(tfds_dir, source="folder",
                                           folder=str(tmp_path / "bad")))) == 1  # then it builds
  with pytest.raises(ValueError, match="data.source='folder' needs data.folder"):
    sources.open_images(_data_cfg(tfds_dir, source="folder"))


def test_folder_changed_after_build_is_an_error(tmp_path, monkeypatch):
  (tmp_path / "imgs").mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.bmp")
  sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "b.png")
  with pytest.raises(ValueError, match="changed since its dataset was built"):
    sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
  (tmp_path / "imgs" / "b.png").unlink()
  sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))  # as built: opens
  # the same bytes at a later time (copied without -p, touched): its bytes are compared; opens
  a_bmp = tmp_path / "imgs" / "a.bmp"
  before = os.stat(a_bmp)
  os.utime(a_bmp, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
  sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
  # once: those times are noted beside the dataset, and the next start reads no image bytes
  def read_again(*args):
    raise AssertionError("the bytes were compared again at the same times")
  with monkeypatch.context() as patch:
    patch.setattr(folder, "contents_digest", read_again)
    sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
  # a.bmp rewritten in place (a bitmap: as large as it was): its listing is the same, its
  # pixels are not; a second later (a file system's coarse clock could keep its old time)
  Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(a_bmp)
  assert os.path.getsize(a_bmp) == before.st_size
  os.utime(a_bmp, ns=(before.st_atime_ns, before.st_mtime_ns + 2 * 10**9))
  with pytest.raises(ValueError, match=r"changed since its dataset was built in .*: the same "
                                       r"files at the same sizes, but their bytes differ"):
    sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
  # a dataset built before times and contents were recorded opens on its listing, as it did
  [meta] = glob.glob(str(tmp_path / "tfds" / "mtl_folder" / "*" / "*" / "metadata.json"))
  with open(meta) as f:
    recorded = json.load(f)
  del recorded["modified"], recorded["contents"]
  with open(meta, "w") as f:
    json.dump(recorded, f)
  sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"))


def test_read_rgb_16_bit_and_palette(tmp_path):
  deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
  Image.fromarray(deep).save(tmp_path / "deep.png")
  image = folder.read_rgb(str(tmp_path / "deep.png"))
  np.testing.assert_array_equal(image[..., 0], np.round(deep / 257.0).astype(np.uint8))
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert("P").save(tmp_path / "pal.gif")
  (tmp_path / "pal.webp").write_bytes(b"")  # empty file: unreadable
  with pytest.raises(ValueError, match="cannot read image .*pal.webp"):
    folder.read_rgb(str(tmp_path / "pal.webp"))


def _png_16bit_rgb(path, samples, colour_type=2):
  """A 16-bit PNG of (H, W, C) uint16 `samples` (Pillow writes none): filter 0 rows, zlib;
  colour type 2: RGB, 4: grey + alpha."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  h, w, _ = samples.shape
  rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
  header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_grey_and_colour_are_scaled_to_8_bits_alike(tmp_path):
  import tifffile
  v = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value
  want = np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
  Image.fromarray(v).save(tmp_path / "grey.png")
  rgb = np.stack([v, 65535 - v, v.T], axis=-1)
  _png_16bit_rgb(tmp_path / "rgb.png", rgb)
  tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")  # Pillow's raw decoder
  tifffile.imwrite(tmp_path / "rgb_be.tif", rgb, photometric="rgb", byteorder=">")
  tifffile.imwrite(tmp_path / "rgb_zip.tif", rgb, photometric="rgb", compression="zlib")  # libtiff
  np.testing.assert_array_equal(folder.read_rgb(str(tmp_path / "grey.png"))[..., 0], want)
  for name in ("rgb.png", "rgb.tif", "rgb_be.tif", "rgb_zip.tif"):  # v >> 8 before: 1 off
    got = folder.read_rgb(str(tmp_path / name))
    np.testing.assert_array_equal(got[..., 0], want, err_msg=name)
    np.testing.assert_array_equal(got[..., 1], want[::-1, ::-1], err_msg=name)
    np.testing.assert_array_equal(got[..., 2], want.T, err_msg=name)


def test_16_bit_grey_and_alpha_is_scaled_as_16_bit_grey(tmp_path):
  from skimage import data
  # A photograph's 16 bits: camera's pixels as the high byte, astronaut's red as the low one.
  v = data.camera().astype(np.uint16) << 8 | data.astronaut()[..., 0]
  alpha = 65535 - v
  _png_16bit_rgb(tmp_path / "la.png", np.stack([v, alpha], axis=-1), colour_type=4)
  Image.fromarray(v).save(tmp_path / "grey.png")
  assert Image.open(tmp_path / "la.png").tile[0][3] == "LA;16B"   # Pillow keeps the high byte
  want = np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
  got = folder.read_rgb(str(tmp_path / "la.png"))
  for c in range(3):  # v >> 8 before: 1 off on about half of the pixels
    np.testing.assert_array_equal(got[..., c], want)
  np.testing.assert_array_equal(got, folder.read_rgb(str(tmp_path / "grey.png")))
  assert np.mean(want != v >> 8) > 0.3


def test_float_and_32_bit_integer_images_are_refused_naming_the_file(tmp_path):
  """A float TIFF may hold 0..1 or 0..255, a 32-bit integer one any range: read as 0..255, a
  [0, 1] photograph became an image of 0s and 1s. 16-bit files stay 16-bit however dark."""
  from skimage import data
  camera = data.camera()
  Image.fromarray(camera.astype(np.float32) / 255).save(tmp_path / "unit.tif")
  Image.fromarray(camera.astype(np.float32)).save(tmp_path / "float255.tif")
  Image.fromarray(camera.astype(np.int32), "I").save(tmp_path / "int32.tif")
  assert [Image.open(tmp_path / n).mode for n in ("unit.tif", "float255.tif", "int32.tif")] == [
      "F", "F", "I"]
  for name, kind in (("unit.tif", "floating-point"), ("float255.tif", "floating-point"),
                     ("int32.tif", "32-bit integer")):
    with pytest.raises(ValueError) as error:
      folder.read_rgb(str(tmp_path / name))
    message = str(error.value)
    assert message.startswith(f"cannot read image {tmp_path / name}: its samples are {kind}")
    assert "save it as an 8- or 16-bit image" in message and "\n" not in message
  dark = camera.astype(np.uint16)  # 16-bit samples all <= 255: near black, not 8-bit levels
  Image.fromarray(dark).save(tmp_path / "dark16.tif")
  got = folder.read_rgb(str(tmp_path / "dark16.tif"))
  np.testing.assert_array_equal(got[..., 0], np.round(dark * 255 / 65535).astype(np.uint8))
  assert got.max() == 1


def _png(path, pixels, interlace=False, rows=None):
  """An 8-bit RGB PNG of `pixels` written by hand: Adam7-interlaced if asked (Pillow writes
  none), its zlib stream complete but holding only the first `rows` rows if given."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
            (0, 1, 1, 2)) if interlace else ((0, 0, 1, 1),)
  raw = b"".join(b"\0" + row.tobytes() for x0, y0, dx, dy in passes
                 for row in pixels[y0::dy, x0::dx] if row.size)
  if rows is not None:
    raw = raw[:rows * (1 + pixels.shape[1] * 3)]
  height, width = pixels.shape[:2]
  path.write_bytes(b"\x89PNG\r\n\x1a\n"
                   + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0,
                                                int(interlace)))
                   + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_folder_that_cannot_be_listed_is_named_and_broken_links_are_not_left_out(tmp_path,
                                                                                   caplog):
  # os.walk passed over a folder it could not list, and list_images over a broken or looping
  # link, without a word: their images were simply not there
  (tmp_path / "x.png").write_bytes(b"x")
  with pytest.raises(ValueError) as error:
    list(folder._walk(str(tmp_path / "x.png")))
  assert str(error.value) == f"cannot list folder {tmp_path / 'x.png'}: Not a directory"
  # a subfolder it cannot list (lost+found, another user's; here one gone after it was seen) is
  # named in a warning and passed over: a whole data folder is not refused for it
  (tmp_path / "data" / "sub").mkdir(parents=True)
  walk = folder._walk(str(tmp_path / "data"))
  assert next(walk)[1] == ["sub"]
  (tmp_path / "data" / "sub").rmdir()
  with caplog.at_level("WARNING"):
    assert list(walk) == []
  assert f"cannot list folder {tmp_path / 'data' / 'sub'} (No such file or directory): its " \
         "images, if any, are left out" in caplog.text
  (tmp_path / "links").mkdir()
  os.mkfifo(tmp_path / "links" / "pipe.png")  # opening it to read would wait for a writer
  (tmp_path / "links" / "broken.png").symlink_to(tmp_path / "links" / "gone.png")
  (tmp_path / "links" / "loop.png").symlink_to(tmp_path / "links" / "loop.png")
  listed = folder.list_images(str(tmp_path / "links"), recursive=False)
  assert [os.path.basename(p) for p in listed] == ["broken.png", "loop.png"]
  with pytest.raises(ValueError, match="loop.png: .*Too many levels of symbolic links"):
    folder.read_rgb(listed[1])
  with pytest.raises(ValueError) as error:
    folder.read_rgb(str(tmp_path / "links" / "pipe.png"))
  assert str(error.value) == (f"cannot read image {tmp_path / 'links' / 'pipe.png'}: not a "
                              "regular file (a pipe, socket or device named as an image)")
  # Pillow's own words named its file object: "cannot identify image file <_io.BufferedReader..."
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "notes.jpg").write_text("not a photograph")
  for name, why in (("empty.png", "the file is empty"),
                    ("notes.jpg", "not a PNG, JPEG, BMP, TIFF, WEBP image, whatever its name "
                                  "says")):
    with pytest.raises(ValueError) as error:
      folder.read_rgb(str(tmp_path / name))
    assert str(error.value) == f"cannot read image {tmp_path / name}: {why}"


def test_a_small_png_inflating_to_much_more_than_its_rows_is_read_in_bounded_memory(tmp_path):
  # 8 x 8 pixels whose IDAT inflates to 64 MB of zeros (a 64 KB file): the data check inflates
  # no further than the rows need, a piece at a time (it held all 64 MB at once)
  import tracemalloc
  pack = zlib.compressobj(9)
  data = b"".join(pack.compress(bytes(1 << 20)) for _ in range(64)) + pack.flush()
  chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                              + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
  (tmp_path / "bomb.png").write_bytes(
      b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
      + chunk(b"IDAT", data) + chunk(b"IEND", b""))
  assert len(data) < 100_000
  tracemalloc.start()
  try:
    image = folder.read_rgb(str(tmp_path / "bomb.png"))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert image.shape == (8, 8, 3) and not image.any()
  assert peak < 4 << 20, peak  # at most a piece of 1 MB and the file's chunk, not 64 MB


def test_a_png_whose_data_ends_early_and_signed_16_bit_samples_are_refused(tmp_path):
  """Pillow reads a PNG whose complete zlib stream holds 10 of 37 rows as an image whose other
  rows are black; a signed 16-bit TIFF's negative samples clipped to 0. Both are refused."""
  pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
  _png(tmp_path / "short.png", pixels, rows=10)
  with pytest.raises(ValueError) as error:
    folder.read_rgb(str(tmp_path / "short.png"))
  rowbytes = 1 + 53 * 3
  assert str(error.value) == (
      f"cannot read image {tmp_path / 'short.png'}: its image data ends early "
      f"({10 * rowbytes:,} of {37 * rowbytes:,} bytes: the rows past it would read as black); "
      "the file is damaged")
  # whole, plain or interlaced (7 passes, some of them empty at this size), it reads exactly
  for interlace in (False, True):
    _png(tmp_path / "whole.png", pixels, interlace)
    np.testing.assert_array_equal(folder.read_rgb(str(tmp_path / "whole.png")), pixels)
  _png(tmp_path / "tiny.png", pixels[:1, :3], interlace=True)
  np.testing.assert_array_equal(folder.read_rgb(str(tmp_path / "tiny.png")), pixels[:1, :3])
  import tifffile
  tifffile.imwrite(tmp_path / "signed.tif", np.array([[-1000, 0, 1000]], np.int16))
  with pytest.raises(ValueError, match=f"cannot read image {tmp_path / 'signed.tif'}: its "
                     "samples are signed 16-bit integers"):
    folder.read_rgb(str(tmp_path / "signed.tif"))


def test_a_symlink_back_up_the_folder_lists_each_image_once(tmp_path):
  root = tmp_path / "images"  # tmp_path holds nothing else: the links below lead back into it
  (root / "sub").mkdir(parents=True)
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "a.png")
  (root / "sub" / "up").symlink_to("..")        # a loop: 41 copies of a.png before
  (root / "sub" / "up2").symlink_to("../..")    # out of the folder and back: never ended
  (root / "again").symlink_to("sub")            # a second way into sub: nothing new
  assert folder.list_images(str(root)) == [str(root / "a.png")]
  assert folder.has_images(str(root / "sub"))


def test_only_the_named_formats_are_decoded_and_bombs_are_refused_from_the_header(tmp_path):
  """A user's folder is untrusted: a file named .png is decoded only as one of IMAGE_FORMATS
  (Pillow's EPS decoder would hand it to Ghostscript), and a small file declaring more pixels
  than MAX_PIXELS is refused before it is decoded."""
  eps = tmp_path / "page.png"
  eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
  gif = tmp_path / "anim.png"
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert("P").save(gif, format="GIF")
  for path in (eps, gif):
    with pytest.raises(ValueError, match=f"cannot read image {path}: not a PNG, JPEG, BMP"):
      folder.read_rgb(str(path))
  side = int(np.sqrt(folder.MAX_PIXELS)) + 2
  bomb = tmp_path / "bomb.png"
  Image.new("1", (side, side)).save(bomb)
  assert bomb.stat().st_size < 100_000
  message = f"cannot read image {bomb}: {side} x {side} pixels, more than the"
  for read in (folder.read_rgb, folder.image_size):
    with pytest.raises(ValueError, match=message):
      read(str(bomb))


# ----------------------------------------------------------------------------- folder cache size


def _header_only_png(path, height, width):
  """A PNG whose header claims height x width RGB pixels (no pixel data): enough to size it."""
  import struct
  import zlib
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                     8, 2, 0, 0, 0))
                   + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def test_folder_cache_estimate_is_its_stored_pixels_and_it_goes_to_cache_dir(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "imgs").mkdir()
  for name, shape in (("big.png", (300, 200)), ("small.png", (50, 70)), ("edge.png", (128, 129))):
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "imgs" / name)
  paths = folder.list_images(str(tmp_path / "imgs"))
  estimate = folder.estimate_bytes(paths, tile=128)
  # big: 3 x 2 tiles of 128 x 128; small: whole; edge: 1 x 2 tiles of 128 x 128
  assert estimate == 3 * (6 * 128 * 128 + 50 * 70 + 2 * 128 * 128)
  cfg = _data_cfg(tmp_path / "tfds", source="folder", folder=str(tmp_path / "imgs"),
                  folder_tile=128, cache_dir=str(tmp_path / "cache"))
  said = []
  builder = sources.folder_builder(cfg.folder, sources.cache_dir(cfg), tile=128, say=said.append)
  stored = sum(r["image"].nbytes for r in builder.as_data_source("train"))
  assert stored == estimate  # the estimate is exact for whole-folder header reads
  where = str(tmp_path / "cache" / "mtl_folder" / builder.builder_config.name)
  assert len(said) == 1 and where in said[0] and "3 images" in said[0], said
  assert f"~{sources.format_bytes(estimate)}" in said[0] and "free)" in said[0]
  records = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(where)
                for f in files if ".array_record" in f)
  # the margin covers the framing
  assert stored <= records <= stored * sources.SPACE_MARGIN + sources.SPACE_FIXED
  assert not os.path.exists(tmp_path / "tfds")  # nothing went to the TFDS data dir
  assert len(sources.open_images(cfg)) == 3   # images, whatever their tiles
  said.clear()  # a built cache is reused without a word
  sources.folder_builder(cfg.folder, sources.cache_dir(cfg), tile=128, say=said.append)
  assert said == []


def test_folder_cache_sample_estimate_scales_by_file_sizes(tmp_path):
  (tmp_path / "imgs").mkdir()
  for i in range(7):
    _header_only_png(tmp_path / "imgs" / f"{i}.png", 600, 100)
  paths = folder.list_images(str(tmp_path / "imgs"))
  exact = folder.estimate_bytes(paths, tile=512)
  assert exact == 7 * (2 * 512) * 100 * 3
  assert folder.estimate_bytes(paths, tile=512, sample=3) == exact  # equal files: exact again


def test_folder_cache_is_refused_with_one_line_when_the_disk_lacks_space(tmp_path):
  per_image = folder.tiled_bytes(9000, 9000, 512)  # 255 MB claimed by a 57-byte file
  count = int(sources.free_bytes(str(tmp_path)) / per_image) + 2
  if count > 20000:
    pytest.skip(f"{sources.free_bytes(str(tmp_path)) / 1e12:.0f} TB free: too many files to "
                "outgrow it")
  (tmp_path / "imgs").mkdir()
  for i in range(count):
    _header_only_png(tmp_path / "imgs" / f"{i:05d}.png", 9000, 9000)
  cache = tmp_path / "cache"
  with pytest.raises(ValueError) as error:
    sources.folder_builder(str(tmp_path / "imgs"), str(cache), say=print)
  message = str(error.value)
  assert "\n" not in message and f"({count} images) needs ~" in message
  assert f"in {cache}/mtl_folder/" in message and "config.data.cache_dir" in message
  assert not os.path.exists(cache / "mtl_folder")  # refused before anything was written
  with pytest.raises(ValueError, match="is free there"):
    sources.check_space(sources.free_bytes(str(tmp_path)) + 10**9, str(tmp_path / "new"), "it")
  assert sources.check_space(1, str(tmp_path / "new" / "dir"), "it") > 0


def test_building_leaves_no_temporary_folder_behind(tmp_path, monkeypatch):
  # TFDS makes one for its GCS bucket's files when a builder's dataset is not prepared yet.
  import tempfile
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  _write_folder(tmp_path / "imgs")
  sources.folder_builder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), tile=0)
  sources.photos_builder(str(tmp_path / "tfds"))
  assert os.listdir(temp) == []


def test_a_png_or_jpeg_cut_short_is_found_before_a_run_and_a_whole_one_is_not_refused(tmp_path):
  # data.pairs checks its files before a run starts (benchmarks.check_pair_sizes): a PNG whose
  # IEND chunk is missing, or a JPEG whose end marker is and which does not decode, is cut short;
  # trailing bytes after IEND (over the 1 KB looked at first) or a JPEG named .png decode, pass
  pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / "whole.png")
  whole = (tmp_path / "whole.png").read_bytes()
  (tmp_path / "trailing.png").write_bytes(whole + b"\0" * 5000)
  Image.fromarray(pixels).save(tmp_path / "jpeg.png", format="JPEG")
  (tmp_path / "cut.png").write_bytes(whole[:len(whole) // 2])
  for name in ("whole.png", "trailing.png", "jpeg.png"):
    assert folder.checked_size(str(tmp_path / name)) == (40, 50)
    assert folder.read_rgb(str(tmp_path / name)).shape == (40, 50, 3)
  with pytest.raises(ValueError, match=r"cut\.png: the file ends before its image data does "
                                       r"\(no IEND chunk: cut short\)"):
    folder.checked_size(str(tmp_path / "cut.png"))
  # a JPEG: its end-of-image marker, or a trailer past the 1 KB looked at (a camera's) decodes
  jpeg = (tmp_path / "jpeg.png").read_bytes()
  (tmp_path / "trailer.jpg").write_bytes(jpeg + b"\0" * 5000)
  (tmp_path / "cut.jpg").write_bytes(jpeg[:len(jpeg) * 2 // 3])
  assert folder.checked_size(str(tmp_path / "trailer.jpg")) == (40, 50)
  with pytest.raises(ValueError, match=r"cut\.jpg: the file ends before its image data does"):
    folder.checked_size(str(tmp_path / "cut.jpg"))
  with pytest.raises(ValueError, match="truncated"):  # what a run met when a batch drew it
    folder.read_rgb(str(tmp_path / "cut.jpg"))
  # an embedded thumbnail's end marker (in a comment segment) before the scan is not the end
  thumb = io.BytesIO()
  Image.fromarray(pixels[:8, :8]).save(thumb, format="JPEG")
  segment = b"\xff\xfe" + (len(thumb.getvalue()) + 2).to_bytes(2, "big") + thumb.getvalue()
  framed = jpeg[:2] + segment + jpeg[2:]
  (tmp_path / "thumb.jpg").write_bytes(framed)
  assert folder.checked_size(str(tmp_path / "thumb.jpg")) == (40, 50)
  scan = len(segment) + jpeg.index(b"\xff\xda")
  (tmp_path / "thumb-cut.jpg").write_bytes(framed[:scan + 50])
  with pytest.raises(ValueError, match=r"thumb-cut\.jpg: the file ends before its image data"):
    folder.checked_size(str(tmp_path / "thumb-cut.jpg"))
