"""Where the clean training images come from: `open_images(config.data, split)`.

  photos  the embedded scikit-image photographs (TFDS `mtl_photos`, built here on first use)
  folder  a folder of clean images, `data.folder` (TFDS `mtl_folder/<name>_<hash>`, built here)
  tfds    any TFDS dataset `data.tfds_name` with an image feature that the user has prepared in
          the data dir in array_record format (mtl never downloads)

Datasets live in the TFDS data dir: `data.tfds_dir`, else $MTL_TFDS_DIR, else
~/.cache/mtl/tensorflow_datasets; the folder source's cache (uncompressed RGB tiles: about
3 bytes per pixel, 0.5 TB for ImageNet) goes to `data.cache_dir` when set. Before building it,
the folder source says where it goes and how much it needs, and refuses when that disk lacks
the space. Data dirs may be URLs (gs://...; TFDS reads them through etils.epath; no space
check there). Builds happen once and are reused; several processes may
start at once (see `prepare`). The result is a random-access sequence of uint8 HWC RGB images;
decoded images are kept in memory up to `data.cache_mb` MiB (default 1024), so the embedded set
is decoded once and a large folder is read through array_record for the rest.
"""
import collections.abc
import contextlib
import fcntl
import operator
import os
import threading

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mtl import files
from mtl.data import folder as folder_lib
from mtl.data import photos

SOURCES = ("photos", "folder", "tfds")
DEFAULT_TFDS_DIR = "~/.cache/mtl/tensorflow_datasets"
DEFAULT_CACHE_MB = 1024
FILE_FORMAT = "array_record"   # random access without TensorFlow
_DOWNLOAD_CONFIG = tfds.download.DownloadConfig(try_download_gcs=False)  # never touch the network


def tfds_dir(data_cfg=None):
  """The TFDS data dir: data_cfg.tfds_dir, else $MTL_TFDS_DIR, else DEFAULT_TFDS_DIR."""
  path = (data_cfg.get("tfds_dir", "") if data_cfg is not None else "") or os.environ.get(
      "MTL_TFDS_DIR", "") or DEFAULT_TFDS_DIR
  return folder_lib.absolute(path)


def cache_dir(data_cfg):
  """Where the folder source's cache goes: data_cfg.cache_dir, else the TFDS data dir."""
  path = data_cfg.get("cache_dir", "") if data_cfg is not None else ""
  return folder_lib.absolute(path) if path else tfds_dir(data_cfg)


format_bytes = files.format_bytes


def free_bytes(path):
  """Free bytes on the disk that holds `path` (its nearest existing ancestor); None for a URL."""
  return None if folder_lib.is_url(path) else files.free_bytes(path)


# array_record framing and TFDS metadata add to the pixels: measured +0.3% on 46 MB of tiles,
# and ~120 kB fixed (block padding) on a 0.4 MB cache.
SPACE_MARGIN, SPACE_FIXED = 1.05, 4 * 2**20


def check_space(needed, where, what):
  """ValueError (one line) when the disk holding `where` has less than `needed` x SPACE_MARGIN
  + SPACE_FIXED bytes free; returns the free bytes (None for a URL: not checked)."""
  free = free_bytes(where)
  if free is not None and needed * SPACE_MARGIN + SPACE_FIXED > free:
    raise ValueError(f"{what} needs ~{format_bytes(needed)} in {where} but only "
                     f"{format_bytes(free)} is free there; set config.data.cache_dir to a disk "
                     "with room")
  return free


# ----------------------------------------------------------------------------- building


@contextlib.contextmanager
def _file_lock(path):
  """Exclusive advisory lock on `path` (created if needed), held for the `with` block."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


class _NeverRaised(Exception):
  pass


def _spill_without_tensorflow():
  """tensorflow_datasets (4.9) runs without TensorFlow but for one path: a split of more than
  1 GB spills to bucket files through tf.io.gfile. Where TensorFlow is absent, those files go
  through etils.epath (local paths and gs:// alike), with room for the 1,000 buckets open at once.
  """
  import importlib.util
  import resource
  import types
  from etils import epath
  from tensorflow_datasets.core import shuffle
  if importlib.util.find_spec("tensorflow") is not None:
    return
  gfile = types.SimpleNamespace(GFile=lambda path, mode="rb": epath.Path(path).open(mode),
                                exists=lambda path: epath.Path(path).exists(),
                                remove=lambda path: epath.Path(path).unlink())
  shuffle.tf = types.SimpleNamespace(io=types.SimpleNamespace(gfile=gfile),
                                     errors=types.SimpleNamespace(
                                         ResourceExhaustedError=_NeverRaised))
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  want = shuffle.BUCKETS_NUMBER + 1024
  if soft != resource.RLIM_INFINITY and soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def prepare(make_builder):
  """`make_builder()` with its dataset prepared: built offline on first use, reused after.

  Safe when several processes start at once: on one machine they queue on a lock file
  (<data_dir>/.locks/) and the later ones find the dataset built; across machines sharing a
  file system TFDS writes into a temporary directory renamed into place, so a reader never sees
  a half-written dataset, and a process that loses the rename race uses the winner's copy.
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  config = builder.builder_config.name if builder.builder_config else "default"
  lock = os.path.join(os.fspath(builder.data_dir_root), ".locks",
                      f"{builder.name}-{config}-{builder.version}.lock")
  # No lock for a URL data dir: the rename into place alone keeps readers safe there.
  with (contextlib.nullcontext() if folder_lib.is_url(lock) else _file_lock(lock)):
    builder = make_builder()   # a fresh builder sees what another process may have built meanwhile
    if not builder.is_prepared():
      logging.info("building TFDS dataset %s in %s", builder.info.full_name, builder.data_dir)
      _spill_without_tensorflow()
      try:
        builder.download_and_prepare(file_format=FILE_FORMAT, download_config=_DOWNLOAD_CONFIG)
      except OSError:
        if not make_builder().is_prepared():   # not a lost rename race: a real failure
          raise
  return make_builder()


def photos_builder(data_dir):
  """The prepared `mtl_photos` builder in `data_dir`."""
  return prepare(lambda: photos.MtlPhotos(data_dir=data_dir, file_format=FILE_FORMAT))


def folder_builder(folder, data_dir, validation_fraction=0.0, tile=folder_lib.DEFAULT_TILE,
                   say=lambda message: print(message, flush=True), paths=None):
  """The prepared `mtl_folder` builder of `folder`; an error if the folder changed since.

  Before a build, `say`s how many images are cached where and the estimated size, and refuses
  (ValueError, one line) when the disk lacks the space. `paths`: the folder's
  `folder.list_images`, where the caller has it."""
  config = folder_lib.FolderConfig(folder, validation_fraction, tile)
  if paths is None:  # FileNotFoundError now, before a lock or a build
    paths = folder_lib.list_images(config.folder)
  make = lambda: folder_lib.MtlFolder(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
  if paths and not make().is_prepared():
    where = os.path.join(folder_lib.absolute(data_dir), "mtl_folder", config.name)
    needed = folder_lib.estimate_bytes(paths, config.tile, folder=config.folder)
    free = check_space(needed, where, f"the cache of image folder {config.folder} "
                       f"({len(paths)} images)")
    say(f"data: caching {len(paths)} images of {config.folder} as uncompressed RGB"
        + (f" tiles of {config.tile} px" if config.tile else "") + f" in {where}: "
        f"~{format_bytes(needed)}"
        + (f" ({format_bytes(free)} free)" if free is not None else "")
        + "; config.data.cache_dir chooses the place")
  builder = prepare(make)
  folder_lib.check_fingerprint(builder, paths)
  return builder


def catalog_builder(name, data_dir):
  """The builder of a TFDS dataset the user prepared in `data_dir` (array_record); never builds."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"data.tfds_name={name!r} is neither a TFDS catalog dataset nor prepared in "
                     f"{data_dir}") from None
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {data_dir}; prepare it there first, e.g. "
        f"`tfds build {name} --data_dir={data_dir} --file_format={FILE_FORMAT}`")
  if builder.info.file_format not in tfds.core.file_adapters.FileFormat.with_random_access():
    raise ValueError(
        f"TFDS dataset {name!r} in {data_dir} is stored as {builder.info.file_format.value}, "
        f"which has no random access; rebuild it with --file_format={FILE_FORMAT}")
  return builder


# ----------------------------------------------------------------------------- reading


def _is_image_feature(feature):
  return (isinstance(feature, tfds.features.Tensor | tfds.features.Image)
          and np.dtype(feature.np_dtype) == np.uint8 and len(feature.shape) == 3
          and feature.shape[-1] in (1, 3, 4, None))


def image_feature_key(features):
  """The key of the image feature: 'image' if it is one, else the first uint8 (H, W, C) feature."""
  keys = [key for key, feature in features.items() if _is_image_feature(feature)]
  if not keys:
    raise ValueError(f"dataset has no uint8 (H, W, C) image feature; its features: "
                     f"{', '.join(features.keys())}")
  return "image" if "image" in keys else keys[0]


def as_rgb(image):
  """uint8 (H, W), (H, W, 1|3|4) -> uint8 (H, W, 3): grey repeated, alpha dropped."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an (H, W) or (H, W, 1|3|4) image, got shape {image.shape}")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


class ImageSource(collections.abc.Sequence):
  """Random access to one split's images as uint8 (H, W, 3) RGB arrays (read-only).

  A tiled folder's images (`layout`: its `folder.TileLayout`) are `folder.TiledImage`s, whose
  windows are read from the tiles that hold them (np.asarray: the whole image); an image kept
  whole is an array. Decoded records (images or tiles) are kept in memory while their total
  stays within `cache_bytes`; the rest are decoded from the record files on every access. Safe
  to read from several threads.
  """

  def __init__(self, records, image_key, description, cache_bytes=0, layout=None):
    self.records = records
    self.image_key = image_key
    self.description = description
    self.cache_bytes = int(cache_bytes)
    self.layout = layout
    self._cache = {}
    self._cached_bytes = 0
    self._lock = threading.Lock()

  def __len__(self):
    return len(self.records) if self.layout is None else len(self.layout)

  def __getitem__(self, index):
    index = operator.index(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"image index {index} out of range for {len(self)} images")
    index %= len(self)
    if self.layout is None:
      return self._record(index)
    height, width = self.layout.size(index)
    if max(height, width) <= self.layout.tile:   # kept whole
      return self._record(*self.layout.tile_record(index, 0, 0))
    read = lambda i, j: self._record(*self.layout.tile_record(index, i, j))
    return folder_lib.TiledImage(height, width, self.layout.tile, read)

  def _record(self, index, key=None):
    """The image of record `index`, decoded (and cached); ValueError if its key is not `key`."""
    image = self._cache.get(index)
    if image is None:
      record = self.records[index]
      if key is not None and record["name"].decode() != key:
        raise ValueError(f"{self.description}: record {index} is "
                         f"{record['name'].decode()!r}, not the tile {key!r} expected there; "
                         "delete the prepared dataset to rebuild it")
      image = as_rgb(record[self.image_key])
      image.setflags(write=False)
      with self._lock:
        if index not in self._cache and self._cached_bytes + image.nbytes <= self.cache_bytes:
          self._cache[index] = image
          self._cached_bytes += image.nbytes
    return image

  def __repr__(self):
    return f"ImageSource({self.description}, {len(self)} images)"


def _split_base(split):
  return split.split("[")[0]   # 'train[:90%]' -> 'train'


# The data fields that one source alone reads: set beside another source, they would be ignored.
SOURCE_FIELDS = {"folder": "folder", "tfds_name": "tfds"}


def check_config(data_cfg):
  """ValueError (one line) for an unknown data.source, a source without the field it reads, or
  a field of another source set beside it (data.folder with the embedded photographs would
  train on the photographs)."""
  source = data_cfg.source
  if source not in SOURCES:
    raise ValueError(f"data.source={source!r}; valid sources: {', '.join(SOURCES)}")
  if source == "folder" and not data_cfg.get("folder", ""):
    raise ValueError("data.source='folder' needs data.folder=<folder of clean images>")
  if source == "tfds" and not data_cfg.get("tfds_name", ""):
    raise ValueError("data.source='tfds' needs data.tfds_name=<prepared TFDS dataset>")
  for field, owner in SOURCE_FIELDS.items():
    if data_cfg.get(field, "") and source != owner:
      raise ValueError(f"data.{field}={data_cfg[field]} is set, but data.source={source!r} does "
                       f"not read it; add --config.data.source={owner} to train on it, or leave "
                       f"data.{field} empty")


def open_images(data_cfg, split="train", cache_mb=None):
  """The images of `split` of the configured source, as an `ImageSource`.

  The folder source's cache goes to `data.cache_dir` ('' -> the TFDS data dir).
  For source='tfds' the 'train' split means `data.tfds_split` (which may be sliced, e.g.
  'train[:90%]'). source='folder' stores tiles of `data.folder_tile` pixels (default 512, 0: whole
  images), served as whole images all the same, and has a 'validation' split when
  `data.validation_fraction` > 0 (default 0).
  `cache_mb` (default `data.cache_mb`, else 1024) bounds the decoded images kept in memory.
  """
  check_config(data_cfg)
  data_dir = tfds_dir(data_cfg)
  source = data_cfg.source
  if source == "photos":
    builder, name = photos_builder(data_dir), "photos"
  elif source == "folder":
    # listed once: the build, the fingerprint check and the tile layout all read it
    paths = folder_lib.list_images(folder_lib.absolute(data_cfg.folder))
    builder = folder_builder(data_cfg.folder, cache_dir(data_cfg),
                             data_cfg.get("validation_fraction", 0.0),
                             data_cfg.get("folder_tile", folder_lib.DEFAULT_TILE), paths=paths)
    name = f"folder {builder.builder_config.folder}"
  elif source == "tfds":
    builder, name = catalog_builder(data_cfg.tfds_name, data_dir), f"tfds {data_cfg.tfds_name}"
    if split == "train":
      split = data_cfg.get("tfds_split", "") or "train"
  if _split_base(split) not in builder.info.splits:
    raise ValueError(f"split {split!r} not in {name}; its splits: "
                     f"{', '.join(sorted(builder.info.splits))}")
  key = image_feature_key(builder.info.features)
  if cache_mb is None:
    cache_mb = data_cfg.get("cache_mb", DEFAULT_CACHE_MB)
  layout = None
  if source == "folder" and builder.builder_config.tile:
    layout = folder_lib.tile_layout(builder, split, paths)
  images = ImageSource(builder.as_data_source(split), key, f"{name} [{split}]",
                       cache_bytes=cache_mb * 2**20, layout=layout)
  if not len(images):
    raise ValueError(f"split {split!r} of {name} holds no images")
  return images
