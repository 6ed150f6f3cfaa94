"""Task registry: a task name such as `sr_x2` or `denoise_30` -> what it does to a clean crop.

Every task maps a clean HR crop to (input, target). The body always sees
`patch_size` x `patch_size` features, so an SR task crops `patch_size * scale` HR pixels.
"""
import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  kind: str        # 'denoise' | 'sr' | 'derain'
  scale: int = 1   # HR / LR ratio; the tail upsamples by it
  sigma: float = 0.0  # noise level on the [0, 255] scale (denoise only)

  def hr_crop(self, patch_size: int) -> int:
    """Side of the clean crop this task needs so that its input is patch_size wide."""
    return patch_size * self.scale


def _denoise(match):
  sigma = int(match.group(1))
  if not 0 < sigma <= 255:
    raise ValueError(f"noise level in '{match.group(0)}' must be in 1..255")
  return TaskSpec(match.group(0), "denoise", 1, float(sigma))


def _sr(match):
  return TaskSpec(match.group(0), "sr", int(match.group(1)))


def _derain(match):
  return TaskSpec(match.group(0), "derain")


# Pattern -> builder. Plain dict: add a task family by adding a line.
TASK_FAMILIES = {
    r"denoise_(\d+)": _denoise,
    r"sr_x([234])": _sr,
    r"derain": _derain,
}
VALID_NAMES = "denoise_<sigma> (e.g. denoise_30, denoise_50), sr_x2, sr_x3, sr_x4, derain"


def get(name: str) -> TaskSpec:
  """The spec of a task name; ValueError naming the valid choices otherwise."""
  for pattern, build in TASK_FAMILIES.items():
    match = re.fullmatch(pattern, str(name))
    if match:
      return build(match)
  raise ValueError(f"unknown task {name!r}; valid tasks: {VALID_NAMES}")


def get_all(names) -> tuple:
  """Specs of an ordered, non-empty, duplicate-free list of task names (the T axis)."""
  names = list(names)
  if not names:
    raise ValueError(f"no tasks given; list one or more of: {VALID_NAMES}")
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"task(s) listed twice: {', '.join(duplicates)}")
  return tuple(get(n) for n in names)
