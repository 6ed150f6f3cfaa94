"""TFDS builder `mtl_folder`: a folder of clean images the user brings (DIV2K HR, BSD400, Flickr2K,
an ImageNet subset ...), searched recursively, stored as raw RGB uint8 in array_record files.

Large images are stored as tiles of at most `tile` x `tile` pixels (default 512; 0 keeps whole
images), spread evenly over the image and overlapping a little: a training crop then reads the
tile that holds it (or the two or four it straddles) instead of a whole 2K image (about 7-10x
faster for DIV2K-sized images when not cached). Tiling is a pure speed-up: readers see whole
images (`TiledImage`), numbered as a tile-0 build numbers them, so a seed draws the same crops
at any tile size; the split's image sizes, stored in the dataset's metadata, locate the tiles
(`tile_layout`). `tile` must be at least the largest training crop (192 for sr_x4 at patch 48).
Pixels are stored uncompressed
(Encoding.BYTES): zlib would shrink photographs by only 1.2-1.7x and make reads about 3x slower.

Before a build, `estimate_bytes` sizes the cache from the image headers (every image up to 2000
of them, else a sample scaled by file sizes); `sources.folder_builder` says where it goes and
how much it needs, and refuses when the disk lacks the space. The folder may be a URL
(gs://bucket/images) that etils.epath reads; local folders are walked following symlinks, each
directory once.

Each folder gets its own builder config, named `<folder name>_<hash of the absolute path, the
hold-out fraction and the tile size>` with the path as description, so two folders never share
a prepared dataset:

  <tfds_dir>/mtl_folder/div2k_hr_3f2a9c1b/1.0.0/mtl_folder-train.array_record-00000-of-00001

The listing's fingerprints (relative paths and byte sizes; and with modification times) and
a digest of the files' bytes are stored with the dataset; opening a dataset whose folder changed
since it was built is an error, an image rewritten in place at its old size included (where the
times differ the bytes are compared, once for those times: a copy or a touch opens; see
`check_fingerprint`).

Reading rules, shared with the benchmark loaders: png, jpg/jpeg, bmp, tif/tiff, webp (any case);
hidden files (names starting with '.') are skipped; grey and palette images become RGB, alpha is
dropped (not composited), 16-bit images (grey, grey + alpha or colour) are scaled to 8 bits as
round(v * 255 / 65535) (`to_8bit`: MATLAB's im2uint8), 32-bit integer and floating-point images
are refused (their range, 0..1, 0..255 or 0..65535, is not in the file), and so are signed
16-bit ones and PNGs whose image data ends before the last row; the first frame of a
multi-frame file is used and EXIF orientation is ignored (as MATLAB's imread does).
"""
import bisect
import hashlib
import os
import re
import stat
import struct
import sys
import warnings
import zlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image
from tensorflow_datasets.core import hashing

from mtl import files as files_lib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The decoders Pillow may use on them, whatever a file holds: never its others (EPS would run
# Ghostscript on an untrusted file).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
# A larger image is refused from its header, before decoding: Pillow's decompression-bomb bound
# (a 17 KB PNG may declare 12000 x 12000 pixels, 432 MB decoded); Pillow only warns below twice it.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # refused here instead


def _open(handle):
  """Image.open restricted to IMAGE_FORMATS and MAX_PIXELS (ValueError naming the path)."""
  image = Image.open(handle, formats=IMAGE_FORMATS)
  if image.width * image.height > MAX_PIXELS:
    image.close()
    raise ValueError(f"{image.width} x {image.height} pixels, more than the {MAX_PIXELS:,} an "
                     "image may hold here (a decompression bomb?)")
  return image
DEFAULT_TILE = 512
SIZES_KEY = "tiled_image_sizes"  # metadata: {split: [[height, width]] in name order}
ESTIMATE_SAMPLE = 2000   # images whose headers are read to size a cache (all of a smaller folder)


def is_url(path):
  """Whether `path` is a URL such as gs://bucket/dir (read through etils.epath)."""
  return re.match(r"^[a-z][a-z0-9+.-]*://", str(path)) is not None


def absolute(folder):
  """`folder` with ~ expanded, made absolute; a URL unchanged."""
  folder = str(folder)
  return folder.rstrip("/") if is_url(folder) else os.path.abspath(os.path.expanduser(folder))


def relative(path, folder):
  """`path` relative to `folder`, with '/' separators (local paths or URLs)."""
  if is_url(folder):
    return str(path)[len(str(folder).rstrip("/")) + 1:]
  return os.path.relpath(path, folder).replace(os.sep, "/")


def is_image_file(name):
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def to_8bit(values):
  """16-bit samples (0..65535) as uint8: round(v * 255 / 65535), the nearest 8-bit level
  (MATLAB's im2uint8); the one rule for 16-bit grey and colour images."""
  return np.clip(np.round(np.asarray(values, np.float64) * 255 / 65535), 0, 255).astype(np.uint8)


# Pillow decodes 16-bit colour to 8 bits by keeping each sample's high byte (v >> 8, not the
# nearest level): the same tiles decoded with the byte-swapped rawmode give the low bytes.
_SWAPPED = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_LOW_BYTES = {f"{mode};16{order}": f"{mode};16{swapped}" for mode in ("RGB", "RGBA")
              for order, swapped in _SWAPPED.items()}


def _rawmode(args):
  """A tile's decoder rawmode (its args are the rawmode or a tuple starting with it)."""
  return args if isinstance(args, str) else args[0]


def _low_bytes_args(args):
  """A tile's decoder args with its 16-bit colour rawmode byte-swapped; None for another."""
  rawmode = _rawmode(args)
  if rawmode not in _LOW_BYTES:
    return None
  return _LOW_BYTES[rawmode] if isinstance(args, str) else (_LOW_BYTES[rawmode], *args[1:])


def _retile(tiles, args_of):
  """`tiles` with each one's decoder args replaced by args_of(args)."""
  # A tile is (decoder, extents, offset, args): a tuple before Pillow 11, a NamedTuple since.
  return [t._replace(args=args_of(t[3])) if hasattr(t, "_replace") else (*t[:3], args_of(t[3]))
          for t in tiles]


def _colour_16bit(image, handle):
  """(H, W, 3) uint16 samples of a 16-bit RGB / RGBA image not yet loaded (alpha dropped), else
  None; `handle` is its file, opened again for the low bytes."""
  if image.mode not in ("RGB", "RGBA") or not image.tile or any(
      _low_bytes_args(t[3]) is None for t in image.tile):
    return None
  high = np.asarray(image)[..., :3].astype(np.uint16)
  handle.seek(0)
  with _open(handle) as again:
    again.tile = _retile(again.tile, _low_bytes_args)
    return high << 8 | np.asarray(again)[..., :3]


def more_than_8_bits(image):
  """Whether an opened image, not yet loaded, holds samples of more than 8 bits (read_rgb rounds
  them to 8)."""
  return (image.mode.startswith("I") or image.mode == "F" or any(
      _low_bytes_args(t[3]) is not None or _rawmode(t[3]) == "LA;16B" for t in image.tile))


def _grey_alpha_16bit(image):
  """(H, W) uint16 grey samples of a 16-bit grey + alpha PNG not yet loaded, else None."""
  # Pillow decodes it as RGBA from rawmode 'LA;16B', keeping the high bytes; read as 8-bit RGBA,
  # each pixel's four bytes (grey high, grey low, alpha high, alpha low) land in R, G, B, A.
  if image.mode != "RGBA" or not image.tile or any(
      _rawmode(t[3]) != "LA;16B" for t in image.tile):
    return None
  image.tile = _retile(image.tile, lambda args: "RGBA" if isinstance(args, str)
                       else ("RGBA", *args[1:]))
  pixels = np.asarray(image).astype(np.uint16)
  return pixels[..., 0] << 8 | pixels[..., 1]


def _grey_samples(image):
  """The samples of a Pillow 'I*' or 'F' (one-channel, more than 8-bit) image as 16-bit values;
  ValueError for 32-bit integer and float samples, whose range the file does not give."""
  rawmodes = sorted({_rawmode(t[3]) for t in image.tile})
  if any(r.startswith("I;16") and "S" in r[4:] for r in rawmodes + [image.mode]):
    raise ValueError(f"its samples are signed 16-bit integers (Pillow {'/'.join(rawmodes)}), "
                     "whose range (-32768..32767? 0..32767?) the file does not say: save it as "
                     "an unsigned 8- or 16-bit image (PNG, TIFF, ...)")
  if image.mode.startswith("I;16") or (
      image.mode == "I" and rawmodes and all(r.startswith("I;16") for r in rawmodes)):
    return np.asarray(image)   # "I" with 16-bit rawmodes: older Pillows' 16-bit grey PNGs
  kind = "floating-point" if image.mode == "F" else "32-bit integer"
  raise ValueError(f"its samples are {kind} (Pillow mode {image.mode}"
                   f"{', ' + '/'.join(rawmodes) if rawmodes else ''}), whose range (0..1? "
                   "0..255? 0..65535?) the file does not say: save it as an 8- or 16-bit image "
                   "(PNG, TIFF, ...)")


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # (x0, y0, dx, dy) of the 7 passes of an interlaced PNG
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type


def _check_png_data(handle):
  """ValueError where a PNG's image data ends before its last row: Pillow fills the rest with
  zeros without a word when the zlib stream is complete but short (libpng, MATLAB's imread,
  refuses it). The data is inflated once more, to count its bytes, no further than the rows
  need (a small file may inflate to gigabytes) and a piece at a time."""
  handle.seek(8)
  inflate, size, expected = zlib.decompressobj(), 0, None
  while expected is None or size < expected:
    head = handle.read(8)
    if len(head) < 8:
      break
    length, kind = struct.unpack(">I4s", head)
    data = handle.read(length)
    handle.seek(4, os.SEEK_CUR)  # the CRC, checked by Pillow
    if kind == b"IHDR":
      expected = _png_data_bytes(*struct.unpack(">IIBBBBB", data[:13]))
    elif kind == b"IDAT" and expected is not None:
      while data and size < expected:
        size += len(inflate.decompress(data, min(expected - size, 1 << 20)))
        data = inflate.unconsumed_tail
    elif kind == b"IEND":
      break
  if expected is not None and size < expected:
    raise ValueError(f"its image data ends early ({size:,} of {expected:,} bytes: the rows "
                     "past it would read as black); the file is damaged")


def _png_data_bytes(width, height, depth, colour, compression, filtering, interlace):
  """The inflated size of a PNG's image data by its IHDR: per row a filter byte and its samples,
  per pass of an interlaced one."""
  bits = depth * _PNG_CHANNELS.get(colour, 1)
  total = 0
  for x0, y0, dx, dy in (_ADAM7 if interlace else ((0, 0, 1, 1),)):
    cols, rows = max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))
    if cols and rows:
      total += rows * (1 + -(-cols * bits // 8))
  return total


def _decoded_rgb(image, handle):
  """uint8 (H, W, 3) RGB of an opened image (`handle`: its file)."""
  if image.mode.startswith("I") or image.mode == "F":   # 16-bit grey; others refused
    grey = to_8bit(np.clip(_grey_samples(image), 0, 65535))
    return np.repeat(grey[..., None], 3, axis=-1)
  grey = _grey_alpha_16bit(image)
  if grey is not None:
    return np.repeat(to_8bit(grey)[..., None], 3, axis=-1)
  colour = _colour_16bit(image, handle)
  if colour is not None:
    return to_8bit(colour)
  return np.asarray(image.convert("RGB"))   # grey, palette, RGBA (alpha dropped), CMYK ...


def read_rgb(path):
  """The image at `path` as uint8 (H, W, 3) RGB; ValueError naming the path if it can't be read
  or its samples have no fixed range (32-bit integer, float or signed)."""
  try:
    if not is_url(path) and not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO blocks
      raise ValueError("not a regular file (a pipe, socket or device named as an image)")
    with epath.Path(path).open("rb") as handle, _open(handle) as image:
      rgb = _decoded_rgb(image, handle)
      if image.format == "PNG":
        _check_png_data(handle)
      return rgb
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, zlib.error) as error:
    raise _read_error(path, error) from None


def _read_error(path, error):
  """ValueError 'cannot read image PATH: why'; Pillow's words for a file it cannot identify
  name its file object, not the file, so they are said here."""
  why = error
  if isinstance(error, Image.UnidentifiedImageError):
    why = ("the file is empty" if file_size(path) == 0 else
           f"not a {', '.join(IMAGE_FORMATS)} image, whatever its name says")
  return ValueError(f"cannot read image {path}: {why}")


def read_every(read, paths, folder, consequence="the dataset is not built"):
  """[read(path)] of every path in order, or after trying them all a ValueError naming each
  that could not be read (five, then how many more): one attempt finds every bad image."""
  out, bad = [], []
  for path in paths:
    try:
      out.append(read(path))
    except ValueError as error:
      bad.append(error)
  if bad:
    raise unreadable(bad, folder, consequence)
  return out


def unreadable(errors, folder, consequence="the dataset is not built"):
  """The ValueError of read_every: `errors` (read_rgb's or image_size's) of `folder`."""
  why = [str(e).removeprefix("cannot read image ") for e in errors]
  more = f"; and {len(why) - 5} more" if len(why) > 5 else ""
  return ValueError(f"cannot read {len(why)} image(s) of {folder} (fix or remove them; "
                    f"{consequence}): {'; '.join(why[:5])}{more}")


def _walk(folder):
  """os.walk of a local folder following symlinks, in sorted order, each directory once (a link
  to a directory already seen, such as one back up, would repeat its images or never end),
  hidden ones (.git, .ipynb_checkpoints, ...) skipped. `folder` itself unlistable: ValueError
  naming it; a subfolder: a warning naming it (os.walk would leave it out without a word)."""
  def refuse(error):  # a subfolder of no one's images (lost+found, another user's) is skipped
    if os.path.abspath(error.filename) == os.path.abspath(folder):
      raise ValueError(f"cannot list folder {error.filename}: {error.strerror or error}")
    logging.warning("cannot list folder %s (%s): its images, if any, are left out",
                    error.filename, error.strerror or error)

  seen = set()
  for root, dirs, files in os.walk(folder, onerror=refuse, followlinks=True):
    here = os.stat(root)
    if (here.st_dev, here.st_ino) in seen:
      dirs[:] = []
      continue
    seen.add((here.st_dev, here.st_ino))
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    yield root, dirs, files


def has_images(folder):
  """Whether a local `folder` (or a subfolder) holds an image file; stops at the first."""
  for root, dirs, files in _walk(os.path.expanduser(folder)):
    if any(is_image_file(n) for n in files):
      return True
  return False


def read_dirs(folder):
  """The folders a recursive list_images of a local `folder` reads images from, as it reads
  them: links followed, each once, hidden ones skipped."""
  return [root for root, _, _ in _walk(os.path.expanduser(folder))]


def list_images(folder, recursive=True):
  """Sorted paths of the image files in `folder` (and its subfolders when `recursive`).

  FileNotFoundError if `folder` is missing; an empty list if it holds no images.
  """
  folder = str(folder) if is_url(folder) else os.path.expanduser(folder)
  if not epath.Path(folder).is_dir():
    raise FileNotFoundError(f"image folder {folder} does not exist (or is not a folder)")
  if not recursive and is_url(folder):
    return sorted(str(p) for p in epath.Path(folder).iterdir()
                  if is_image_file(p.name) and p.is_file())
  if not recursive:  # a broken or looping link stays in: reading it says what it is
    return sorted(p for p in (os.path.join(folder, n) for n in os.listdir(folder)
                              if is_image_file(n))
                  if os.path.isfile(p) or (os.path.islink(p) and not os.path.exists(p)))
  paths = []
  walk = epath.Path(folder).walk() if is_url(folder) else _walk(folder)
  for root, dirs, files in walk:
    dirs[:] = [d for d in dirs if not d.startswith(".")]   # .ipynb_checkpoints, .git, ...
    paths.extend(os.path.join(str(root), n) for n in files if is_image_file(n))
  return sorted(paths)


def listing(folder, paths):
  """[(relative path, bytes, modification time)] of `paths`, one stat each (nanoseconds for a
  local file, an object store's own stamp for a URL)."""
  out = []
  for path in paths:
    if is_url(path):
      stat = epath.Path(path).stat()
      out.append((relative(path, folder), stat.length, stat.mtime))
    else:
      stat = os.stat(path)
      out.append((relative(path, folder), stat.st_size, stat.st_mtime_ns))
  return out


def fingerprint(entries, modified=False):
  """Short hash of a `listing` (relative paths and sizes; with `modified`, and modification
  times): changes when files are added, removed or resized (or rewritten, copied or touched)."""
  digest = hashlib.sha1()
  for name, size, when in entries:
    stamp = f"\0{when}" if modified else ""
    digest.update(f"{name}\0{size}{stamp}\n".encode())
  return digest.hexdigest()[:16]


def contents_digest(folder, paths):
  """Short hash of the files' relative paths and bytes: what a rewrite changes and a copy or a
  touch does not."""
  digest = hashlib.sha1()
  for path in paths:
    digest.update(f"{relative(path, folder)}\0".encode())
    with epath.Path(path).open("rb") as handle:
      for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()[:16]


def file_size(path):
  return os.path.getsize(path) if not is_url(path) else epath.Path(path).stat().length


def tiled_bytes(height, width, tile):
  """Bytes of an image's stored tiles (uint8 RGB; tiles overlap, so more than the image)."""
  rows = [min(tile, height) if tile else height] * len(tile_origins(height, tile))
  cols = [min(tile, width) if tile else width] * len(tile_origins(width, tile))
  return sum(rows) * sum(cols) * 3


def image_size(path):
  """(height, width) from the image's header, without decoding it."""
  return _header(path)[0]


def _header(path):
  """((height, width), Pillow's format name) from the image's header."""
  try:
    with epath.Path(path).open("rb") as handle, _open(handle) as image:
      return (image.height, image.width), image.format
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    raise _read_error(path, error) from None


TAIL = 1024  # bytes of a file's end searched for its end marker (PNG IEND, JPEG EOI)


def checked_size(path):
  """image_size, and for a local PNG or JPEG (by its header, whatever its name) a ValueError
  where the file ends before its image data does: a copy or a download cut short, found without
  decoding it where its end marker lies in its last bytes (a JPEG with a longer trailer is
  decoded to decide)."""
  size, kind = _header(path)
  if kind == "PNG" and not is_url(path) and not _png_ends(path):
    raise ValueError(f"cannot read image {path}: the file ends before its image data does "
                     "(no IEND chunk: cut short)")
  if kind == "JPEG" and not is_url(path) and not _jpeg_ends(path):
    raise ValueError(f"cannot read image {path}: the file ends before its image data does "
                     "(no end-of-image marker, and it does not decode: cut short)")
  return size


def _jpeg_ends(path):
  """Whether a JPEG holds its end-of-image marker (FF D9) after its first scan's start, in its
  last bytes, else decodes (a trailer after the marker, as some cameras write, is allowed; an
  FF D9 before the scan ends an embedded thumbnail, not the image)."""
  end = os.path.getsize(path)
  with open(path, "rb") as handle:
    scan = _jpeg_scan_start(handle, end)
    base = max(0, end - TAIL)
    handle.seek(base)
    marker = handle.read().rfind(b"\xff\xd9")
    if scan is not None and marker >= 0 and base + marker > scan:
      return True
  try:
    with open(path, "rb") as handle, _open(handle) as image:
      image.load()
    return True
  except (OSError, ValueError, SyntaxError):
    return False


def _jpeg_scan_start(handle, end):
  """The offset of a JPEG's first start-of-scan marker (FF DA), found by walking its segments'
  lengths from the start-of-image marker; None where the file ends first."""
  at = 2  # the start-of-image marker
  while at + 4 <= end:
    handle.seek(at)
    head = handle.read(4)
    if head[0] != 0xFF:
      return None
    if head[1] == 0xFF:  # a fill byte
      at += 1
    elif head[1] == 0xDA:
      return at
    elif head[1] == 0x01 or 0xD0 <= head[1] <= 0xD8:  # markers without a length
      at += 2
    else:
      at += 2 + int.from_bytes(head[2:], "big")
  return None


def _png_ends(path):
  """Whether a PNG file holds its IEND chunk: in its last bytes (the usual end), else found by
  walking its chunks' lengths from the signature (bytes after IEND are allowed)."""
  end = os.path.getsize(path)
  with open(path, "rb") as handle:
    handle.seek(max(0, end - TAIL))
    if b"IEND" in handle.read():
      return True
    at = 8  # the signature
    while at + 8 <= end:
      handle.seek(at)
      head = handle.read(8)
      length, kind = int.from_bytes(head[:4], "big"), head[4:]
      if kind == b"IEND":
        return True
      at += 12 + length  # length, type, data, CRC
    return False


def estimate_bytes(paths, tile=DEFAULT_TILE, sample=ESTIMATE_SAMPLE, folder=""):
  """Estimated bytes of the stored tiles of `paths` (of `folder`, for read_every's refusal):
  exact from the headers of up to `sample` images; beyond, an evenly spread sample scaled by
  the ratio of file sizes."""
  if len(paths) <= sample:
    return sum(tiled_bytes(*size, tile) for size in read_every(image_size, paths, folder))
  chosen = [paths[round(i * (len(paths) - 1) / (sample - 1))] for i in range(sample)]
  stored = sum(tiled_bytes(*size, tile) for size in read_every(image_size, chosen, folder))
  return int(stored * sum(file_size(p) for p in paths) / sum(file_size(p) for p in chosen))


def config_name(folder, validation_fraction=0.0, tile=DEFAULT_TILE):
  """'<slug of the folder name>_<8 hex of sha1(path, fraction, tile)>', e.g. 'div2k_hr_3f2a9c1b'."""
  folder = absolute(folder)
  slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder).lower()).strip("_")[:32] or "folder"
  key = f"{folder}|{float(validation_fraction)!r}|{int(tile)}"
  return f"{slug}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def split_validation(names, validation_fraction):
  """Deterministic hold-out: (train names, validation names).

  The validation names are the round(fraction * n) (at least one) names with the smallest
  sha1 hash, so the choice does not depend on listing order and barely moves when files are added.
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
  if validation_fraction == 0.0:
    return list(names), []
  count = max(1, int(round(validation_fraction * len(names))))
  if count >= len(names):
    raise ValueError(f"validation_fraction={validation_fraction} leaves no training image out of "
                     f"{len(names)}")
  by_hash = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
  held_out = set(by_hash[:count])
  return [n for n in names if n not in held_out], sorted(held_out)


def tile_origins(length, tile):
  """Origins along one axis of ceil(length / tile) tiles of side `tile`, spread evenly from 0 to
  length - tile (neighbours overlap a little); [0] if the axis fits in one tile."""
  if tile <= 0 or length <= tile:
    return [0]
  count = -(-length // tile)
  return [int(round(i * (length - tile) / (count - 1))) for i in range(count)]


def tile_keys(name, height, width, tile):
  """[((top, left), record key)] of the tiles, row-major, that an image `name` of height x width
  is stored as: '<name>@<top>,<left>', or `name` alone for an image kept whole."""
  origins = [(top, left) for top in tile_origins(height, tile)
             for left in tile_origins(width, tile)]
  if len(origins) == 1:
    return [((0, 0), name)]
  return [((top, left), f"{name}@{top},{left}") for top, left in origins]


def _spans(origins, side, start, stop):
  """[(tile, first, end)]: the tiles along one axis (`origins`, each `side` long) and the ranges of
  them that make [start, stop), each from the last tile starting at or before it (which reaches
  furthest): one tile where one holds the whole range."""
  spans = []
  while True:
    i = bisect.bisect_right(origins, start) - 1
    end = min(stop, origins[i] + side)
    spans.append((i, start - origins[i], end - origins[i]))
    if end >= stop:
      return spans
    start = end


class TiledImage:
  """An image stored as tiles (`tile_keys`), read lazily: its `shape`, and windows
  image[top:bottom, left:right] cut from the tiles that cover them (the one tile that holds a
  window when there is one, else the pieces of two or four); np.asarray gives the whole image."""

  def __init__(self, height, width, tile, read):
    """read(i, j): the tile in row i, column j of the image's tiles (uint8 (h, w, 3))."""
    self.shape = (height, width, 3)
    self._origins = (tile_origins(height, tile), tile_origins(width, tile))
    self._sides = (min(tile, height), min(tile, width))
    self._read = read

  def __getitem__(self, key):
    if not (isinstance(key, tuple) and len(key) == 2
            and all(isinstance(k, slice) and k.step in (None, 1) for k in key)):
      raise TypeError(f"a TiledImage reads windows image[top:bottom, left:right], not [{key}]")
    spans = []
    for k, length, origins, side in zip(key, self.shape, self._origins, self._sides):
      start, stop, _ = k.indices(length)
      spans.append(_spans(origins, side, start, max(start, stop)))
    rows, cols = spans
    if len(rows) == len(cols) == 1:
      (i, top, bottom), (j, left, right) = rows[0], cols[0]
      return self._read(i, j)[top:bottom, left:right]
    window = np.empty((sum(b - a for _, a, b in rows), sum(b - a for _, a, b in cols), 3),
                      np.uint8)
    y = 0
    for i, top, bottom in rows:
      x = 0
      for j, left, right in cols:
        window[y:y + bottom - top, x:x + right - left] = self._read(i, j)[top:bottom, left:right]
        x += right - left
      y += bottom - top
    return window

  def __array__(self, dtype=None, copy=None):
    image = self[:, :]
    return image if dtype is None else image.astype(dtype)

  def __repr__(self):
    return f"TiledImage({self.shape[0]} x {self.shape[1]})"


class TileLayout:
  """Where a tiled split keeps each image's tiles. Images are numbered in the order a whole-image
  (tile 0) build stores them, so image k is the same image whatever the tile size; TFDS orders a
  split's records by the md5 of their keys salted with the split name (stable: TFDS would bump
  every dataset's version to change it), and reads check each tile's key."""

  def __init__(self, names, sizes, tile, split):
    hasher = hashing.Hasher(split)
    order = sorted(range(len(names)), key=lambda i: hasher.hash_key(names[i]))
    self.tile, self.names = tile, [names[i] for i in order]
    self.sizes = np.asarray(sizes, np.int64).reshape(-1, 2)[order]
    keys = [key for name, (h, w) in zip(self.names, self.sizes.tolist())
            for _, key in tile_keys(name, h, w, tile)]
    self.records = np.empty(len(keys), np.int64)  # keys[j] is record records[j]
    self.records[sorted(range(len(keys)), key=lambda j: hasher.hash_key(keys[j]))] = np.arange(
        len(keys))
    counts = [len(tile_origins(h, tile)) * len(tile_origins(w, tile)) for h, w in self.sizes]
    self.first = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

  def __len__(self):
    return len(self.names)

  def size(self, index):
    """(height, width) of image `index`."""
    height, width = self.sizes[index].tolist()
    return height, width

  def tile_record(self, index, row, column):
    """(record index, key) of the tile in row `row`, column `column` of image `index`'s tiles."""
    height, width = self.size(index)
    tops, lefts = tile_origins(height, self.tile), tile_origins(width, self.tile)
    record = int(self.records[self.first[index] + row * len(lefts) + column])
    if len(tops) == len(lefts) == 1:
      return record, self.names[index]
    return record, f"{self.names[index]}@{tops[row]},{lefts[column]}"


class FolderConfig(tfds.core.BuilderConfig):
  """One folder of clean images; `validation_fraction` > 0 adds a 'validation' split (whole
  images are held out, before tiling)."""

  def __init__(self, folder, validation_fraction=0.0, tile=DEFAULT_TILE):
    if tile < 0:
      raise ValueError(f"tile={tile} must be >= 0 (0: whole images)")
    folder = absolute(folder)
    super().__init__(name=config_name(folder, validation_fraction, tile), description=folder)
    self.folder = folder
    self.validation_fraction = float(validation_fraction)
    self.tile = int(tile)


class LocalInfo(tfds.core.DatasetInfo):
  """The DatasetInfo of mtl's own builders, which TFDS's GCS bucket never holds: TFDS (4.9)
  makes an empty temporary folder for the bucket's files before it sees GCS is off, and leaves
  it behind, one for every builder of a dataset not yet prepared."""

  def initialize_from_bucket(self):
    pass


class MtlFolder(tfds.core.GeneratorBasedBuilder):
  """Clean images (or tiles) from a user folder; features `image` (uint8 HWC RGB, raw bytes) and
  `name` (relative path, plus '@top,left' for a tile of an image cut in several)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # TFDS looks for a download-checksums file beside the builder's code via `importlib_resources`,
  # which a TensorFlow-free install may lack; nothing is downloaded here, so there is no file.
  code_path = None

  def _info(self):
    return LocalInfo(
        builder=self,
        description=f"Clean images from the folder {self.builder_config.folder}.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "name": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    paths = list_images(config.folder)
    if not paths:
      raise ValueError(f"image folder {config.folder} holds no images "
                       f"(looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    entries = listing(config.folder, paths)
    self.info.metadata["fingerprint"] = fingerprint(entries)
    self.info.metadata["modified"] = fingerprint(entries, modified=True)
    self.info.metadata["contents"] = contents_digest(config.folder, paths)
    self.info.metadata["folder"] = config.folder
    return {split: self._generate_examples(split, named)
            for split, named in split_paths(config, paths).items()}

  def _generate_examples(self, split, named_paths):
    from mtl import progress as progress_lib
    tile, sizes, bad = self.builder_config.tile, [], []
    progress = progress_lib.Progress(len(named_paths), every_seconds=10, unit="image")
    for done, (name, path) in enumerate(named_paths, 1):
      try:
        image = read_rgb(path)
      except ValueError as error:  # read on: one attempt names every bad image (read_every)
        bad.append(error)
        image = None
      if image is not None:
        sizes.append(list(image.shape[:2]))
        side = tile or max(image.shape[:2])
        for (top, left), key in tile_keys(name, *image.shape[:2], tile):
          part = np.ascontiguousarray(image[top:top + side, left:left + side])
          yield key, {"image": part, "name": key}
      line = progress.update(done)  # TFDS's own bar counts tiles, without a total
      if line and done < len(named_paths):
        print(f"data: caching the {split} split: {line}", flush=True)
    if bad:  # nothing of the split is kept: TFDS keeps a split only once it ends
      raise unreadable(bad, self.builder_config.folder)
    if tile:  # the split's tile layout, without reading its records (`tile_layout`)
      self.info.metadata.setdefault(SIZES_KEY, {})[split] = sizes


def split_paths(config, paths):
  """{split: [(name, path)]} of a folder config's images `paths`: 'train', and 'validation' when
  images are held out; names are relative paths."""
  by_name = {relative(p, config.folder): p for p in paths}
  train, validation = split_validation(sorted(by_name), config.validation_fraction)
  splits = {"train": [(n, by_name[n]) for n in train]}
  if validation:
    splits["validation"] = [(n, by_name[n]) for n in validation]
  return splits


def tile_layout(builder, split, paths=None):
  """The `TileLayout` of a prepared tiled folder dataset's split: image sizes from its metadata,
  or from the image headers for a dataset built before they were stored there. `paths`: the
  folder's `list_images`, where the caller has it (a large folder's listing takes a while)."""
  config = builder.builder_config
  if split not in ("train", "validation"):
    raise ValueError(f"split {split!r} of a tiled image folder: use 'train' or 'validation' "
                     "whole (a slice of the records would cut images' tiles apart)")
  paths = list_images(config.folder) if paths is None else paths
  named = split_paths(config, paths).get(split, [])
  sizes = (builder.info.metadata or {}).get(SIZES_KEY, {}).get(split)
  if sizes is None:
    logging.info("reading the sizes of %d images from their headers (their cache in %s was "
                 "built before it stored them)", len(named), builder.data_dir)
    sizes = [image_size(path) for _, path in named]
  layout = TileLayout([name for name, _ in named], sizes, config.tile, split)
  stored = builder.info.splits[split].num_examples
  if stored != len(layout.records):
    raise ValueError(f"the {split} split in {builder.data_dir} holds {stored} tiles, but the "
                     f"images of {config.folder} make {len(layout.records)}; delete that "
                     "directory to rebuild it")
  return layout


def check_fingerprint(builder, paths=None):
  """ValueError if the prepared dataset's folder listing differs from the folder's listing now
  (`paths`: its `list_images`, where the caller has it), or a file of it was rewritten since.
  Modification times say which may have been: where they differ, the files' bytes are read and
  compared (a copy or a touch changes the times, not the bytes), and times whose bytes matched
  are noted in the dataset's directory (VERIFIED_FILE), so the next start does not read them
  again. A dataset built before times and contents were recorded is checked on its listing
  alone."""
  config = builder.builder_config
  metadata = builder.info.metadata or {}
  paths = list_images(config.folder) if paths is None else paths
  entries = listing(config.folder, paths)
  built = metadata.get("fingerprint")
  if built is not None and built != fingerprint(entries):
    raise ValueError(f"image folder {config.folder} changed since its dataset was built in "
                     f"{builder.data_dir}; delete that directory to rebuild it")
  modified = fingerprint(entries, modified=True)
  verified = os.path.join(os.fspath(builder.data_dir), VERIFIED_FILE)
  if metadata.get("modified") in (None, modified) or _read_text(verified) == modified:
    return
  logging.warning("image folder %s: its files' modification times differ from when its dataset "
                  "was built (copied or touched?); comparing their bytes once", config.folder)
  if metadata.get("contents") != contents_digest(config.folder, paths):
    raise ValueError(f"image folder {config.folder} changed since its dataset was built in "
                     f"{builder.data_dir}: the same files at the same sizes, but their bytes "
                     "differ (rewritten); delete that directory to rebuild it")
  try:  # these times hold the built bytes: the next start need not read them again
    files_lib.write_atomic(verified, lambda handle: handle.write(modified.encode()))
  except OSError as error:  # a read-only dataset directory: compared again next time
    logging.warning("could not note the compared times in %s: %s", verified, error)


VERIFIED_FILE = "mtl_verified_modified.txt"  # the times whose files' bytes matched the build's


def _read_text(path):
  try:
    with open(path) as handle:
      return handle.read()
  except OSError:
    return None
