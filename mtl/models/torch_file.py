"""Read a torch.save'd state_dict (.pt) without torch: a zip of pickled storage records
(torch >= 1.6) or torch's older single-stream format (what torch 1.4 wrote).

A user's file is untrusted: every pickle in it goes through one restricted unpickler that
rebuilds tensors from storage records and allows ordered dicts and plain values, nothing else;
any other class is refused with one line and no code runs.
"""
import collections
import io
import os
import pickle
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


class _StorageType:
  def __init__(self, name):
    self.name = name


class _Storage:
  """A storage record; `data` is filled in from the file once its bytes are located."""

  def __init__(self, kind, key, numel=None):
    self.kind, self.key, self.numel, self.array = kind, key, numel, None


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self):
    flat = self.storage.array
    if not self.size:
      return flat[self.offset].copy()
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
    return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *unused):
  return tensor


class _Unpickler(pickle.Unpickler):
  """Rebuilds tensors from storage records; refuses every other class (no code runs on load)."""

  def __init__(self, file, path, storages):
    super().__init__(file, encoding="latin1")
    self.path, self.storages = path, storages

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2") or (
        module, name) == ("torch._utils", "_rebuild_tensor"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise ValueError(f"{self.path} is not a plain IPT state_dict (it pickles {module}.{name}); "
                     "save model.state_dict(), not the model or a training state")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise ValueError(f"{self.path}: unknown persistent record {pid!r:.60}")
    kind, key = pid[1], str(pid[2])
    if not isinstance(kind, _StorageType):
      raise ValueError(f"{self.path}: tensor storage of type {kind!r:.60} is not supported; "
                       f"supported: {', '.join(_STORAGE_DTYPES)}")
    if len(pid) > 5 and pid[5] is not None:
      raise ValueError(f"{self.path}: storage views (pre-1.0 torch) are not supported")
    if key not in self.storages:
      self.storages[key] = _Storage(kind.name, key, pid[4] if len(pid) > 4 else None)
    return self.storages[key]


def _to_array(raw, kind, path):
  dtype = _STORAGE_DTYPES[kind]
  if dtype == "bfloat16":  # bfloat16 is the top half of a float32
    return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
  dtype = np.dtype(dtype).newbyteorder("<")
  if len(raw) % dtype.itemsize:
    raise ValueError(f"{path}: storage of {len(raw)} bytes is not a whole number of {kind}")
  return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))


def _read_zip(path):
  with zipfile.ZipFile(path) as archive:
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
      storage.array = _to_array(archive.read(f"{root}data/{key}"), storage.kind, path)
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
    storage.array = _to_array(stream.read(numel * itemsize), storage.kind, path)
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
    else:
      raise ValueError(f"{path} is not a torch.save file (neither zip nor pickle)")
  except (pickle.UnpicklingError, EOFError, KeyError, struct.error, zipfile.BadZipFile) as error:
    raise ValueError(f"{path} is not a readable torch.save file: {error}") from None
  except ValueError as error:  # pickle's own (e.g. "unsupported pickle protocol") lack the path
    if path in str(error):
      raise
    raise ValueError(f"{path} is not a readable torch.save file: {error}") from None
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in obj.values()):
    raise ValueError(f"{path} does not hold a state_dict of tensors")
  state = {str(k): v.to_numpy() for k, v in obj.items()}
  for prefix in ("module.", "model."):  # DataParallel / wrapper prefixes
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix):]: v for k, v in state.items()}
  return state
