"""Small file helpers every writer shares: atomic writes with fsync, JSON, config diffs, durations,
and the workdir lock (one trainer per workdir).

A file written here is complete or absent: the bytes go to a temporary file beside the target,
are fsynced, and os.replace puts them in place (then the directory entry is fsynced), so a
killed run never leaves a half-written results.json, meta.json or chunk behind.
"""
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
import zipfile

import numpy as np


def fsync_dir(path):
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_atomic(path, write, replace=True):
  """write(file) into a temporary file beside `path`, then os.replace it into place; with
  replace=False a file at `path` (one another process wrote meanwhile) is kept: FileExistsError."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    if replace:
      os.replace(tmp, path)
    else:
      _publish_new(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(os.path.dirname(path))


def _publish_new(tmp, path):
  """Move `tmp` to `path` unless a file is there (FileExistsError): a hard link fails on one
  atomically; where links are not supported, a check just before the rename."""
  try:
    os.link(tmp, path)
  except FileExistsError:
    raise
  except OSError:
    if os.path.lexists(path):
      raise FileExistsError(errno.EEXIST, "File exists", path) from None
    os.replace(tmp, path)
    return
  os.remove(tmp)


def write_json(path, obj):
  """JSON (sorted keys, indent 2) written atomically; values JSON lacks are written as str."""
  data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
  write_atomic(path, lambda f: f.write(data))


def read_json(path):
  """The JSON object in the file `path` (every file mtl writes holds one); a file that is not
  JSON, or holds another value, is a ValueError naming it."""
  with open(path, "rb") as f:
    try:
      value = json.loads(f.read())
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError; nesting
      raise ValueError(f"{path} is not a readable JSON file ({error}); it may be damaged: restore "
                       "it or move it away") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a JSON {type(value).__name__}, not the dict this file has; "
                     "it may be damaged: restore it or move it away")
  return value


def read_arrays(path, names):
  """The arrays `names` of the .npz file `path`, never unpickled; ValueError ("Kind: message")
  for a file that is not such an archive: damaged, an .npy, a name missing, a member encrypted
  or compressed past zipfile (RuntimeError, NotImplementedError), or a header claiming more
  memory than there is (MemoryError)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return tuple(np.asarray(data[name]) for name in names)
  # TypeError: an .npy (one array) has no arrays to take by name
  except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, RuntimeError,
          NotImplementedError, MemoryError) as error:
    raise ValueError(f"{type(error).__name__}: {error}") from None


def check_not_a_file(path, flag, wanted):
  """Refuse (ValueError, one line) an output folder `path` that is a file: `flag=path is a file;
  give {wanted}`."""
  if path and os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}={path} is a file; give {wanted}")


def tuples(value):
  """JSON lists -> tuples, recursively (ConfigDict fields that are tuples in config files)."""
  if isinstance(value, dict):
    return {k: tuples(v) for k, v in value.items()}
  return tuple(tuples(v) for v in value) if isinstance(value, list) else value


def flatten(d, prefix=""):
  """{'a': {'b': 1}} -> {'a.b': 1}; tuples as lists, so JSON round trips compare equal."""
  out = {}
  for key, value in d.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def differences(saved, current, ignore=(), defaults=None):
  """Dotted fields whose values differ between two nested dicts, except `ignore` and below.
  With `defaults` (a nested dict), a field `saved` lacks counts as its default there: `saved`
  was written before the field existed, and what wrote it behaved as the default."""
  a, b = flatten(saved), flatten(json.loads(json.dumps(current, default=str)))
  if defaults is not None:
    known = flatten(json.loads(json.dumps(defaults, default=str)))
    a = {**{k: known[k] for k in b if k not in a and k in known}, **a}
  ignored = lambda k: any(k == f or k.startswith(f + ".") for f in ignore)
  return sorted(k for k in set(a) | set(b) if not ignored(k) and a.get(k) != b.get(k))


def refuse_changes(path, saved, current, ignore=(), what="a different config", advice="",
                   defaults=None):
  """ValueError naming up to four changed fields (saved -> current) if the dicts differ.

  Fields that only `current` has were added to mtl after `saved` was written (an older run
  behaved as if they had their defaults): not refused, but for a field of `defaults` (a nested
  dict) given another value than its default; returned, for the caller to mention."""
  old, new = flatten(saved), flatten(json.loads(json.dumps(current, default=str)))
  known = flatten(json.loads(json.dumps(defaults, default=str))) if defaults else {}
  added = sorted(set(new) - set(old))
  diff = [k for k in differences(saved, current, ignore, defaults)
          if k not in added or k in known]
  if diff:
    raise ValueError(f"{path} holds {what}: {show_changes(saved, current, diff)}"
                     f"{'; ' + advice if advice else ''}")
  return added


def show_changes(saved, current, fields):
  """'a.b (1 -> 2), c (absent -> 3)': up to four of the dotted `fields` with their values in
  the two nested dicts, then how many more."""
  old, new = flatten(saved), flatten(json.loads(json.dumps(current, default=str)))
  value = lambda d, k: repr(d[k]) if k in d else "absent"
  shown = ", ".join(f"{k} ({value(old, k)} -> {value(new, k)})" for k in fields[:4])
  if len(fields) > 4:
    rest = ", ".join(fields[4:8]) + (" ..." if len(fields) > 8 else "")
    shown += f" and {len(fields) - 4} more ({rest})"
  return shown


def field_list(fields, shown=6):
  """'a, b, c and 4 more': a long list of dotted field names, for one readable line."""
  more = f" and {len(fields) - shown} more" if len(fields) > shown else ""
  return ", ".join(fields[:shown]) + more


def format_duration(seconds):
  """'1h02m', '3m04s', '7s'; '?' when unknown."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(max(0.0, seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LockHeld(ValueError):
  """Another live process holds the workdir."""


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _peek(path, size=40):
  """A file's first bytes, for naming what an unreadable file holds."""
  try:
    with open(path, "rb") as f:
      head = f.read(size + 1)
  except OSError as error:
    return f"unreadable: {error.strerror}"
  return "empty" if not head else f"it holds {head[:size]!r}{'...' if len(head) > size else ''}"


class WorkdirLock:
  """`<workdir>/<name>` holding {pid, host, started}: one trainer per workdir.

  acquire() creates it (O_EXCL); a lock left by a dead process on this host is stale and
  replaced; a live holder, or any holder on another host (its pid cannot be checked from
  here), makes acquire() raise LockHeld naming it. release() removes only our own lock.
  """

  def __init__(self, workdir, name):
    self.path = os.path.join(workdir, name)
    self.stale = None  # the holder record of a stale lock that acquire() replaced

  def holder(self):
    """The lock's {pid, host, started}, or None when it is missing or not such a record."""
    try:
      with open(self.path) as f:
        record = json.load(f)
    except (OSError, ValueError, RecursionError):
      return None
    valid = (isinstance(record, dict) and isinstance(record.get("pid"), int)
             and 0 < record["pid"] < 2**31)  # os.kill takes a C int
    return record if valid else None

  def live_holder(self):
    """The holder while it counts as working here (a live process on this host, or any on
    another host), else None: no lock, a stale one, or a file no trainer wrote."""
    holder = self.holder()
    return None if holder is None or self._stale(holder) else holder

  @staticmethod
  def _stale(holder):
    """Left by a dead process on this host (or by this process's pid, reused)."""
    return holder.get("host") == socket.gethostname() and (
        holder.get("pid") == os.getpid() or not _pid_alive(holder.get("pid")))

  def _remove_if_still(self, stale):
    """Remove the lock if it still holds `stale`: under a lock on the folder, so that of two
    processes replacing one stale lock, the later cannot remove the earlier's new one."""
    try:
      folder = os.open(os.path.dirname(self.path), os.O_RDONLY)
    except OSError:
      folder = None
    try:
      if folder is not None:
        try:
          fcntl.flock(folder, fcntl.LOCK_EX)
        except OSError:  # a file system without flock on folders (NFS): unguarded, as before
          pass
      if self.holder() == stale:
        os.remove(self.path)
    except FileNotFoundError:
      pass
    finally:
      if folder is not None:
        os.close(folder)  # and with it the flock

  def acquire(self):
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self.holder()
        if holder is None:  # written this instant by another process, or garbage
          time.sleep(0.2)
          holder = self.holder()
        if holder is None:
          if not os.path.exists(self.path):
            continue
          raise LockHeld(f"{self.path} is not a lock a trainer wrote ({_peek(self.path)}), so "
                         "whether a trainer still works here is unknown; if none does, delete "
                         "that file and run again") from None
        if self._stale(holder):
          self.stale = holder
          self._remove_if_still(holder)
          continue
        where = "" if holder.get("host") == record["host"] else f" on {holder.get('host')}"
        raise LockHeld(f"workdir {os.path.dirname(self.path)} is in use by pid {holder.get('pid')}"
                       f"{where} since {holder.get('started')} ({self.path}); wait for it to end, "
                       "or delete that file if the process is gone") from None
      try:
        with os.fdopen(fd, "w") as f:
          json.dump(record, f)
      except BaseException:  # a full disk: an empty lock would refuse the next start
        os.remove(self.path)
        raise
      return self
    raise LockHeld(f"could not take {self.path}: it keeps reappearing")

  def release(self):
    holder = self.holder()
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
      os.remove(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def format_bytes(n):
  for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
    if n >= size:
      return f"{n / size:.1f} {unit}"
  return f"{n / 1e3:.1f} kB"


def free_bytes(path):
  """Free bytes on the file system that holds `path` (its nearest existing ancestor); None where
  that cannot be read."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None
