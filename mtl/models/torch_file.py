"""Read a torch.save'd state_dict (.pt) without torch: a zip of pickled storage records
(torch >= 1.6) or torch's older single-stream format (what torch 1.4 wrote).

A user's file is untrusted: every pickle in it goes through one restricted unpickler that
rebuilds tensors from storage records and allows ordered dicts and plain values, nothing else;
any other class is refused with one line and no code runs. Its dict keys must be strings (a key
is hashed as it is stored, and a pickle's memo lets 700 bytes build a tuple whose hash takes
2**40 steps, or one nested too deep for the hash to survive), and it holds no sets.
"""
import collections
import io
import math
import os
import pickle
import reprlib
import struct
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _Brief(reprlib.Repr):
  """Short reprs of untrusted values for messages: a full repr of a memo-shared tuple is
  exponentially long; a container other than a tuple, list or dict shows its type only."""

  def __init__(self):
    super().__init__()
    self.maxlevel, self.maxtuple, self.maxlist, self.maxdict = 2, 4, 4, 4

  def repr_int(self, x, level):
    return repr(x) if x.bit_length() <= 64 else f"<int of {x.bit_length()} bits>"

  def repr_instance(self, x, level):
    plain = isinstance(x, (float, type(None)))
    return repr(x)[:self.maxother] if plain else f"<{type(x).__name__}>"


_brief = _Brief().repr


class _Record:
  """A record the unpickler makes; the pickle may not set its fields (_Unpickler's BUILD), which
  are checked as it is made: a stride set afterwards would read memory outside its storage."""


class _StorageType(_Record):
  def __init__(self, name):
    self.name = name


class _Storage(_Record):
  """A storage record; `data` is filled in from the file once its bytes are located."""

  def __init__(self, kind, key, numel=None):
    self.kind, self.key, self.numel, self.array = kind, key, numel, None


def _is_index(value):
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Tensor(_Record):
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def numel(self):
    return math.prod(self.size)

  def to_numpy(self):
    """The tensor's values, copied out of its storage; ValueError unless every element it names
    lies inside the storage and it names no more elements than the storage holds (the file's
    offset, sizes and strides are untrusted: numpy's strided view would read whatever memory
    they point at, and zero strides would ask for any amount of it)."""
    flat = self.storage.array
    if flat is None:
      raise ValueError(f"its storage {self.storage.key!r} holds no data")
    if self.numel() > flat.size:
      raise ValueError(f"sizes {_brief(self.size)} name {self.numel():,} elements of a storage of "
                       f"{flat.size:,} (an expanded view; a state_dict holds none)")
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if last >= flat.size:
      raise ValueError(f"sizes {_brief(self.size)}, strides {_brief(self.stride)} and offset "
                       f"{_brief(self.offset)} reach element {_brief(last)} of a storage of "
                       f"{flat.size}")
    if any(s > flat.size for s in self.stride):  # a size-1 dimension's (as_strided overflows)
      raise ValueError(f"strides {_brief(self.stride)} step past a storage of {flat.size}")
    if not self.size:
      return flat[self.offset].copy()
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
    return np.array(view)


MAX_DIMS = 64  # numpy's limit; a record with more is no tensor torch wrote


def _rebuild_tensor(storage, offset, size, stride, *unused):
  size, stride = tuple(size), tuple(stride)
  if len(size) > MAX_DIMS:  # before any product: 2 bytes of memo a size, each up to any bits
    raise ValueError(f"a tensor record of {len(size)} dimensions (at most {MAX_DIMS})")
  if not (isinstance(storage, _Storage) and _is_index(offset) and len(size) == len(stride)
          and all(map(_is_index, size + stride))
          and all(v < 2 ** 63 for v in (offset,) + size + stride)):
    raise ValueError(f"a tensor record of storage {_brief(storage)}, offset {_brief(offset)}, "
                     f"sizes {_brief(size)}, strides {_brief(stride)} (needs a storage and "
                     "indices from 0 to 2**63 - 1)")
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *unused):
  return tensor


def _ordered_dict():
  """collections.OrderedDict as a state_dict's pickle calls it: without arguments (given pairs,
  it would hash their keys before the unpickler could look at them)."""
  return collections.OrderedDict()


def _string_keys(keys, path):
  bad = next((key for key in keys if type(key) is not str), None)
  if bad is not None:  # checked by type alone: hashing or printing it could take forever
    raise ValueError(f"{path}: a dict key of type {type(bad).__name__} (a state_dict's keys are "
                     "strings)")


class _Unpickler(pickle._Unpickler):
  """Rebuilds tensors from storage records; refuses every other class (no code runs on load), a
  dict key that is not a string and any set. Python's own unpickler (pickle._Unpickler, not the
  C one) so that the opcodes that store keys can be checked before a key is hashed."""

  dispatch = dict(pickle._Unpickler.dispatch)

  def __init__(self, file, path, storages):
    super().__init__(file, encoding="latin1")
    self.path, self.storages = path, storages

  def _setitem(self):  # the stack ends with dict, key, value
    _string_keys(self.stack[-2:-1], self.path)
    super().load_setitem()

  def _setitems(self):  # after a MARK the stack holds the marked items alone: key, value, ...
    _string_keys(self.stack[::2], self.path)
    super().load_setitems()

  def _dict(self):
    _string_keys(self.stack[::2], self.path)
    super().load_dict()

  def _set(self):
    raise ValueError(f"{self.path}: the pickle builds a set (a state_dict holds none)")

  def _build(self):  # the stack ends with the object, then the state to set on it
    inst, state = self.stack[-2:]
    if isinstance(inst, _Record):
      raise ValueError(f"{self.path}: the pickle sets the fields of a "
                       f"{type(inst).__name__.strip('_').lower()} record (torch.save never does)")
    # torch.save's state_dict: an OrderedDict whose one attribute is _metadata; any other would
    # shadow its methods (values, items) or change the functions find_class hands out
    if not (type(inst) is collections.OrderedDict and type(state) is dict
            and set(state) <= {"_metadata"}):
      raise ValueError(f"{self.path}: the pickle sets attributes on an object of type "
                       f"{type(inst).__name__} (a state_dict has one attribute, its _metadata)")
    super().load_build()

  dispatch[pickle.SETITEM[0]] = _setitem
  dispatch[pickle.SETITEMS[0]] = _setitems
  dispatch[pickle.DICT[0]] = _dict
  dispatch[pickle.BUILD[0]] = _build
  for _op in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET):
    dispatch[_op[0]] = _set
  del _op

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return _ordered_dict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2") or (
        module, name) == ("torch._utils", "_rebuild_tensor"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    what = f"{module}.{name}"  # from the file: a newline in it would forge a line of output
    what = what if what.isprintable() and len(what) <= 80 else _brief(what)
    raise ValueError(f"{self.path} is not a plain IPT state_dict (it pickles {what}); "
                     "save model.state_dict(), not the model or a training state")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
            and type(pid[2]) is str):
      raise ValueError(f"{self.path}: unknown persistent record {_brief(pid)} (torch.save's: "
                       "('storage', type, key, ...) with a string key)")
    kind, key = pid[1], pid[2]
    if not isinstance(kind, _StorageType):
      raise ValueError(f"{self.path}: tensor storage of type {_brief(kind)} is not supported; "
                       f"supported: {', '.join(_STORAGE_DTYPES)}")
    if len(pid) > 5 and pid[5] is not None:
      raise ValueError(f"{self.path}: storage views (pre-1.0 torch) are not supported")
    numel = pid[4] if len(pid) > 4 else None
    if numel is not None and not _is_index(numel):
      raise ValueError(f"{self.path}: storage {_brief(key)} declares {_brief(numel)} elements")
    if key not in self.storages:
      self.storages[key] = _Storage(kind.name, key, numel)
    return self.storages[key]


def _to_array(raw, storage, path):
  """The storage's bytes as its dtype; ValueError unless they are as many as it declares."""
  array = _decode(raw, storage.kind, path)
  if storage.numel is not None and array.size != storage.numel:
    raise ValueError(f"{path}: storage {storage.key!r} declares {storage.numel} elements and "
                     f"holds {array.size}")
  return array


def _decode(raw, kind, path):
  dtype = _STORAGE_DTYPES[kind]
  itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
  if len(raw) % itemsize:
    raise ValueError(f"{path}: storage of {len(raw)} bytes is not a whole number of {kind}")
  if dtype == "bfloat16":  # bfloat16 is the top half of a float32
    return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
  dtype = np.dtype(dtype).newbyteorder("<")
  return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))


MAX_SHARING = 4  # the most bytes a state_dict's tensors may name per byte of its file


def _read_zip(path):
  with zipfile.ZipFile(path) as archive:
    for info in archive.infolist():  # so no member inflates past the file (a zip bomb)
      if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ValueError(f"{path}: member {_brief(info.filename)} is "
                         f"{'encrypted' if info.flag_bits & 0x1 else 'compressed'}; torch.save "
                         "stores its members plain")
    held = sum(info.file_size for info in archive.infolist())
    if held > os.path.getsize(path):  # members that share bytes: each read would copy them
      raise ValueError(f"{path}: its members hold {held:,} bytes in a file of "
                       f"{os.path.getsize(path):,}: they overlap (torch.save writes them apart)")
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError(f"{path} is a zip but not a torch.save file (no single data.pkl)")
    root = pickles[0][:-len("data.pkl")]
    if f"{root}byteorder" in names and archive.read(f"{root}byteorder") != b"little":
      raise ValueError(f"{path} was saved big-endian; only little-endian files are supported")
    storages = {}
    obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
    for key, storage in storages.items():
      storage.array = _to_array(archive.read(f"{root}data/{key}"), storage, path)
  return obj


def _read_legacy(path, data):
  """torch's pre-1.6 stream: magic, protocol, sys info, the object, storage keys, raw storages.

  Every one of its five pickles goes through the restricted unpickler: any of them could name a
  callable.
  """
  stream = io.BytesIO(data)
  storages = {}
  magic = _Unpickler(stream, path, storages).load()  # checked first: a plain pickle stops here
  if not (isinstance(magic, int) and magic == _LEGACY_MAGIC):
    raise ValueError(f"{path} is neither a zip nor a legacy torch.save file (bad magic number)")
  header = [magic] + [_Unpickler(stream, path, storages).load() for _ in range(2)]
  if isinstance(header[2], dict) and not header[2].get("little_endian", True):
    raise ValueError(f"{path} was saved big-endian; only little-endian files are supported")
  obj = _Unpickler(stream, path, storages).load()
  keys = _Unpickler(stream, path, storages).load()
  if not isinstance(keys, list):
    raise ValueError(f"{path}: the legacy storage-key record is not a list")
  for key in keys:
    (numel,) = struct.unpack("<q", stream.read(8))
    storage = storages[str(key)]
    itemsize = 2 if storage.kind == "BFloat16Storage" else np.dtype(
        _STORAGE_DTYPES[storage.kind]).itemsize
    left = len(data) - stream.tell()
    if not 0 <= numel * itemsize <= left:
      raise ValueError(f"{path}: storage {storage.key!r} declares {numel} elements; the file has "
                       f"{left} bytes left")
    storage.numel = numel if storage.numel is None else storage.numel  # _to_array compares
    storage.array = _to_array(stream.read(numel * itemsize), storage, path)
  return obj


def read_state_dict(path):
  """{name: numpy array} of a torch.save'd state_dict, read without torch."""
  if os.path.isdir(path):
    raise ValueError(f"checkpoint {path} is a folder; give the .pt file itself")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  with open(path, "rb") as f:
    data = f.read()
  try:
    if zipfile.is_zipfile(io.BytesIO(data)):
      obj = _read_zip(path)
    elif data[:1] == b"\x80":  # a pickle stream: torch's legacy format
      obj = _read_legacy(path, data)
    elif data[:4] == b"PK\x03\x04":  # a zip's first entry, its directory at the end lost
      raise ValueError(f"{path} is a damaged torch.save file (a zip cut short or broken: its "
                       "directory is unreadable); copy or download it again")
    else:
      raise ValueError(f"{path} is not a torch.save file (neither zip nor pickle)")
  # TypeError, AttributeError: a pickle that calls or indexes records as they are never used;
  # Overflow-, Memory-, RecursionError: records declaring absurd sizes or nesting
  except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, AttributeError,
          OverflowError, MemoryError, RecursionError, struct.error, zipfile.BadZipFile) as error:
    raise ValueError(f"{path} is not a readable torch.save file: "
                     f"{error or type(error).__name__}") from None
  except ValueError as error:  # pickle's own (e.g. "unsupported pickle protocol") lack the path
    if path in str(error):
      raise
    raise ValueError(f"{path} is not a readable torch.save file: {error}") from None
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in dict.values(obj)):
    raise ValueError(f"{path} does not hold a state_dict of tensors")
  # tensors sharing storages (tied weights) can name more bytes than the file holds, not this many
  named = sum(t.numel() * t.storage.array.itemsize for t in dict.values(obj)
              if t.storage.array is not None)
  if named > MAX_SHARING * len(data) + (1 << 20):
    raise ValueError(f"{path}: its tensors name {named:,} bytes from a file of "
                     f"{len(data):,}; a state_dict names at most {MAX_SHARING} times its file")
  state = {}
  for name, tensor in dict.items(obj):
    try:
      state[str(name)] = tensor.to_numpy()
    except ValueError as error:
      raise ValueError(f"{path}: tensor {str(name)!r:.80}: {error}") from None
  for prefix in ("module.", "model."):  # DataParallel / wrapper prefixes
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix):]: v for k, v in state.items()}
  return state
