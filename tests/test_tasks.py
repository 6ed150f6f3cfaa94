"""Task names -> TaskSpecs: every family, the errors, and the test-set selectors."""
import os
import re

import pytest

from mtl import tasks


@pytest.mark.parametrize("name, kind, fields", [
    ("denoise_25", "denoise", dict(sigma=25.0, gray=False, scale=1)),
    ("denoise_gray_50", "denoise", dict(sigma=50.0, gray=True, scale=1)),
    ("sr_x3", "sr", dict(scale=3)),
    ("derain", "derain", {}), ("dehaze", "dehaze", {}), ("deblur", "deblur", {}),
    ("lowlight", "lowlight", {}),
    ("jpeg_10", "jpeg", dict(quality=10, scale=1)), ("jpeg_100", "jpeg", dict(quality=100)),
])
def test_get_parses_every_family(name, kind, fields):
  spec = tasks.get(name)
  assert (spec.name, spec.kind) == (name, kind) and spec.kind in tasks.KINDS
  for field, value in fields.items():
    assert getattr(spec, field) == value
  assert spec.hr_crop(48) == 48 * spec.scale


@pytest.mark.parametrize("name, message", [
    ("jpeg_0", "JPEG quality in 'jpeg_0' must be in 1..100"),
    ("jpeg_101", "must be in 1..100"),
    ("denoise_gray_0", "noise level in 'denoise_gray_0' must be in 1..255"),
    ("denoise_gray", "unknown task 'denoise_gray'; valid tasks: .*jpeg_<quality>"),
    ("haze", "unknown task 'haze'"),
    ("sr_x5", "unknown task"),
])
def test_get_rejects_bad_names(name, message):
  with pytest.raises(ValueError, match=message):
    tasks.get(name)


def test_get_all_keeps_order_and_rejects_duplicates():
  names = ("derain", "dehaze", "denoise_25", "deblur", "lowlight")
  assert [s.name for s in tasks.get_all(names)] == list(names)
  with pytest.raises(ValueError, match="listed twice: dehaze"):
    tasks.get_all(("dehaze", "deblur", "dehaze"))


def test_selects_by_kind_name_or_both():
  gray, colour, jpeg = tasks.get("denoise_gray_25"), tasks.get("denoise_15"), tasks.get("jpeg_10")
  assert tasks.selects("", jpeg) and tasks.selects("denoise", gray) and tasks.selects("denoise", colour)
  assert tasks.selects("denoise_15", colour) and not tasks.selects("denoise_15", gray)
  assert tasks.selects("derain+jpeg", jpeg) and not tasks.selects("jpeg_20", jpeg)


def test_the_readme_lists_every_task_family_and_no_machine_paths():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "README.md")) as f:
    readme = f.read()
  bullet = readme[readme.index("- **Tasks**"):readme.index("- **Regimes**")]
  families = [n.split(" ")[0] for n in tasks.VALID_NAMES.split(", ")]
  assert len(families) == 10
  missing = [n for n in families if f"`{n}`" not in bullet]
  assert not missing, f"README's Tasks bullet lacks {missing}"
  for name in ("allinone3.py", "allinone5.py"):
    assert name in bullet
  assert not re.search(r"(?<![\w.])/(work|root|home|Users)/", readme), "a machine-specific path"
