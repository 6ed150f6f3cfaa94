"""Small file helpers every writer shares: atomic writes with fsync, JSON, config diffs, durations.

A file written here is complete or absent: the bytes go to a temporary file beside the target,
are fsynced, and os.replace puts them in place (then the directory entry is fsynced), so a
killed run never leaves a half-written results.json, meta.json or chunk behind.
"""
import json
import math
import os


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


def write_atomic(path, write):
  """write(file) into a temporary file beside `path`, then os.replace it into place."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(os.path.dirname(path))



def write_json(path, obj):
  """JSON (sorted keys, indent 2) written atomically; values JSON lacks are written as str."""
  data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
  write_atomic(path, lambda f: f.write(data))


def read_json(path):
  with open(path) as f:
    return json.load(f)


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


def differences(saved, current, ignore=()):
  """Dotted fields whose values differ between two nested dicts, except `ignore` and below."""
  a, b = flatten(saved), flatten(json.loads(json.dumps(current, default=str)))
  ignored = lambda k: any(k == f or k.startswith(f + ".") for f in ignore)
  return sorted(k for k in set(a) | set(b) if not ignored(k) and a.get(k) != b.get(k))


def refuse_changes(path, saved, current, ignore=(), what="a different config", advice=""):
  """ValueError naming up to four changed fields (saved -> current) if the dicts differ."""
  diff = differences(saved, current, ignore)
  if diff:
    old, new = flatten(saved), flatten(json.loads(json.dumps(current, default=str)))
    shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in diff[:4])
    raise ValueError(f"{path} holds {what}: {shown}{'; ' + advice if advice else ''}")


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
