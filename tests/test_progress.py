"""The progress line: rate over a window (compilation falls out), ETA, cadence."""
import numpy as np
import pytest

from mtl import io
from mtl import progress as progress_lib


def test_progress_rate_eta_and_cadence():
  now = [100.0]
  progress = progress_lib.Progress(total_steps=1000, start_step=200, every=50, window=3,
                                  clock=lambda: now[0])
  assert np.isnan(progress.rate())
  now[0] = 130.0  # the first stretch includes compilation: 25 steps in 30 s
  assert progress.update(225) is None  # fewer than `every` steps since the last line
  now[0] = 135.0
  line = progress.update(250, {"loss/total": 0.012345})
  assert line == "step 250/1000 (25.0%) | 1.43 steps/s | ETA 8m45s | loss/total 0.01235"
  for step in (300, 350, 400):  # 50 steps every 10 s: the slow start leaves the window
    now[0] += 10.0
    line = progress.update(step)
  assert progress.rate() == pytest.approx(5.0)
  assert progress.eta() == pytest.approx(120.0)
  assert line == "step 400/1000 (40.0%) | 5 steps/s | ETA 2m00s"
  now[0] += 1.0
  assert progress.update(1000) is not None  # the last step always logs
  assert io.format_duration(3 * 3600 + 125) == "3h02m"
  assert io.format_duration(float("nan")) == "?"
