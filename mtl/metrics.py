"""Image quality metrics as the low-level vision literature computes them (BasicSR conventions).

Host-side numpy in float64. Images are HWC (or HW) in [0, 255], uint8 or float. `crop_border`
pixels are dropped from every edge first (SR papers crop `scale` pixels); `y_channel=True`
scores the BT.601 luma of RGB images (MATLAB rgb2ycbcr, unrounded), as IPT reports every task;
callers score grey images (`is_grey`) on their grey plane (`grey_plane`): the Y of three equal
channels is 16 + 219/255 v, which shrinks every difference and adds 20 log10(255/219) = 1.32 dB.
"""
import numpy as np

# MATLAB rgb2ycbcr, Y row, for R, G, B in [0, 1]: Y = 16 + 65.481 R + 128.553 G + 24.966 B.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0

LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601, as MATLAB's rgb2gray and JPEG's Y

_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2
_SSIM_RADIUS = 5  # 11 x 11 window


def _gaussian_taps(radius=_SSIM_RADIUS, sigma=1.5):
  """Normalised 1-D Gaussian taps (cv2.getGaussianKernel(11, 1.5)); the window is their outer product."""
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-x ** 2 / (2.0 * sigma ** 2))
  return taps / taps.sum()


_SSIM_TAPS = _gaussian_taps()
SSIM_WINDOW = len(_SSIM_TAPS)  # an image's smallest side SSIM scores, after its border crop


def rgb_to_y(img):
  """BT.601 luma (MATLAB rgb2ycbcr's Y, in [16, 235]) of an (..., 3) RGB image in [0, 255]; no rounding."""
  img = np.asarray(img, dtype=np.float64)
  if img.shape[-1] != 3:
    raise ValueError(f"rgb_to_y needs a trailing axis of 3 (RGB), got shape {img.shape}")
  return img @ _Y_WEIGHTS + _Y_OFFSET


def grey_plane(img):
  """(H, W, 1) float64 grey plane of an (H, W, 3) image in [0, 255]: round(BT.601 luminance), as
  a saved grey image holds it (DnCNN's grey protocol); of a one-channel (H, W, 1) or (H, W)
  image, that channel."""
  img = np.asarray(img, np.float64)
  if img.ndim == 2 or img.shape[-1] == 1:
    return img.reshape(img.shape[:2] + (1,))
  return np.round(img @ np.asarray(LUMA))[..., None]


def is_grey(img):
  """Whether an HWC image is grey: one channel, or all its channels equal at every pixel."""
  img = np.asarray(img)
  return img.ndim == 2 or bool(np.all(img == img[..., :1]))


def _prepare(a, b, crop_border, y_channel):
  """Both images as float64 HWC, border-cropped and (optionally) reduced to Y."""
  a = np.asarray(a)
  b = np.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
  if a.ndim not in (2, 3):
    raise ValueError(f"images must be HW or HWC, got shape {a.shape}")
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  if a.ndim == 2:
    a, b = a[..., None], b[..., None]
  h, w = a.shape[:2]
  crop_border = int(crop_border)
  if crop_border < 0 or 2 * crop_border >= min(h, w):
    raise ValueError(f"crop_border={crop_border} must be in 0..{(min(h, w) - 1) // 2} "
                     f"for {h}x{w} images")
  if crop_border:
    a = a[crop_border:-crop_border, crop_border:-crop_border]
    b = b[crop_border:-crop_border, crop_border:-crop_border]
  # As BasicSR: Y only for RGB images; a single-channel image is already luma.
  if y_channel and a.shape[-1] == 3:
    a, b = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
  return a, b


def psnr(a, b, crop_border=0, y_channel=True):
  """Peak signal-to-noise ratio in dB, 10 log10(255^2 / MSE); inf for identical images."""
  a, b = _prepare(a, b, crop_border, y_channel)
  mse = np.mean((a - b) ** 2)
  if mse == 0:
    return float("inf")
  return float(10.0 * np.log10(255.0 ** 2 / mse))


# An identical pair's PSNR in a mean: its inf would hide every other image, and leaving it out
# would rank an exact output below a nearly exact one. One 8-bit value off by one among N values
# scores 10 log10(255^2 N): 100 dB at N = 154k (393 x 393).
PSNR_CAP = 100.0


def mean_psnr(values):
  """(mean PSNR, how many pairs are identical): each identical pair (PSNR inf) counts as
  PSNR_CAP."""
  capped = [PSNR_CAP if v == float("inf") else v for v in values]
  return float(np.mean(capped)), len(values) - sum(v != float("inf") for v in values)


def _filter_valid(x):
  """'valid' correlation of an HW array with the separable 11 x 11 Gaussian window."""
  k = len(_SSIM_TAPS)
  h, w = x.shape
  rows = sum(t * x[i:h - k + 1 + i] for i, t in enumerate(_SSIM_TAPS))
  return sum(t * rows[:, j:w - k + 1 + j] for j, t in enumerate(_SSIM_TAPS))


def _ssim_single(x, y):
  """Mean SSIM map of two HW float64 images (Wang et al. 2004, BasicSR's `_ssim`)."""
  mu_x, mu_y = _filter_valid(x), _filter_valid(y)
  var_x = _filter_valid(x * x) - mu_x ** 2
  var_y = _filter_valid(y * y) - mu_y ** 2
  cov = _filter_valid(x * y) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
      (mu_x ** 2 + mu_y ** 2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2))
  return ssim_map.mean()


def ssim(a, b, crop_border=0, y_channel=True):
  """Structural similarity: 11x11 Gaussian (sigma 1.5), valid filtering, averaged over channels."""
  a, b = _prepare(a, b, crop_border, y_channel)
  if min(a.shape[:2]) < len(_SSIM_TAPS):
    raise ValueError(f"SSIM needs at least {len(_SSIM_TAPS)}x{len(_SSIM_TAPS)} pixels after "
                     f"cropping, got {a.shape[0]}x{a.shape[1]}")
  return float(np.mean([_ssim_single(a[..., c], b[..., c]) for c in range(a.shape[-1])]))
