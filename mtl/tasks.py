"""Task registry: a task name such as `sr_x2` or `denoise_30` -> what it does to a clean crop.

Every task maps a clean HR crop to (input, target). The body always sees
`patch_size` x `patch_size` features, so an SR task crops `patch_size * scale` HR pixels.

  denoise_<sigma>       colour AWGN, sigma on [0, 255] (CBSD68; the all-in-one papers' "BSD68"
                        -- AirNet (Li et al. 2022), PromptIR (Potlapalli et al. 2023), IDR (Zhang
                        et al. 2023) -- is the 68 colour images, so their configs use this kind)
  denoise_gray_<sigma>  AWGN on the luminance (ITU-R BT.601 Y), the grey-image protocol of DnCNN
                        (Zhang et al. 2017) on grey BSD68 / Set12; input and target are the Y
                        plane repeated in the 3 channels the model takes
  sr_x2, sr_x3, sr_x4   MATLAB bicubic downscaling
  derain                rain streaks added (procedural, or real RainTrainL layers)
  dehaze                atmospheric scattering I = J t + A (1 - t) with a depth proxy
  deblur                a Gaussian or linear-motion blur kernel
  lowlight              gamma / exposure darkening and Poisson-Gaussian noise
  jpeg_<quality>        JPEG compression (IJG tables at that quality, 4:2:0), quality 1..100
Any task can instead train and test on real degraded / clean pairs (see mtl.data.pipeline and
mtl.evaluate); the kind then only names the task and which paired test sets it reads.
"""
import dataclasses
import re
import zlib

KINDS = ("denoise", "sr", "derain", "dehaze", "deblur", "lowlight", "jpeg")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  kind: str        # one of KINDS
  scale: int = 1   # HR / LR ratio; the tail upsamples by it
  sigma: float = 0.0  # noise level on the [0, 255] scale (denoise only)
  gray: bool = False  # denoise on the luminance plane (denoise_gray_<sigma>)
  quality: int = 0    # JPEG quality 1..100 (jpeg only)

  def hr_crop(self, patch_size: int) -> int:
    """Side of the clean crop this task needs so that its input is patch_size wide."""
    return patch_size * self.scale


def task_id(name: str, bits: int = 31) -> int:
  """A task's random-stream id: the low `bits` bits of the crc32 of its name. Degradations, test
  inputs and the task's own parameters (head, query, tail) are keyed by it (31 bits: a
  non-negative int32 for jax.random.fold_in), and the data pipeline's host draws by all 32 bits,
  so a seed gives a task the same inputs and the same initial values whichever other tasks a run
  trains (seeds stay paired across study regimes)."""
  return zlib.crc32(name.encode()) & ((1 << bits) - 1)


def _sigma(match):
  sigma = int(match.group(1))
  if not 0 < sigma <= 255:
    raise ValueError(f"noise level in '{match.group(0)}' must be in 1..255")
  return float(sigma)


def _denoise(match):
  return TaskSpec(match.group(0), "denoise", 1, _sigma(match))


def _denoise_gray(match):
  return TaskSpec(match.group(0), "denoise", 1, _sigma(match), gray=True)


def _sr(match):
  return TaskSpec(match.group(0), "sr", int(match.group(1)))


def _jpeg(match):
  quality = int(match.group(1))
  if not 1 <= quality <= 100:
    raise ValueError(f"JPEG quality in '{match.group(0)}' must be in 1..100")
  return TaskSpec(match.group(0), "jpeg", quality=quality)


def _plain(kind):
  return lambda match: TaskSpec(match.group(0), kind)


# Pattern -> builder. Plain dict: add a task family by adding a line.
TASK_FAMILIES = {
    r"denoise_(\d+)": _denoise,
    r"denoise_gray_(\d+)": _denoise_gray,
    r"sr_x([234])": _sr,
    r"derain": _plain("derain"),
    r"dehaze": _plain("dehaze"),
    r"deblur": _plain("deblur"),
    r"lowlight": _plain("lowlight"),
    r"jpeg_(\d+)": _jpeg,
}
VALID_NAMES = ("denoise_<sigma> (e.g. denoise_25), denoise_gray_<sigma>, sr_x2, sr_x3, sr_x4, "
               "derain, dehaze, deblur, lowlight, jpeg_<quality> (e.g. jpeg_10)")


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


def selects(selector: str, spec: TaskSpec) -> bool:
  """Whether a test-set selector ('denoise', 'jpeg_10', 'derain+dehaze', '' = all) names `spec`."""
  if not selector:
    return True
  return any(s in (spec.kind, spec.name) for s in selector.split("+"))
