"""Expression features from facial landmarks (Khan 2018), as a table for the MLP.

Khan, "Facial Expression Recognition using Facial Landmark Detection and Feature Extraction
via Neural Networks" (2018) in four stages, each a function here:

1. **Face location.** A 3×3 Gaussian low-pass filter, then contrast-limited adaptive
   histogram equalization (CLAHE), then OpenCV's Viola–Jones Haar cascade
   (``haarcascade_frontalface_default``); the largest detection is the face, cropped and
   resized to ``CROP``×``CROP`` (``preprocess``, ``detect_face``, ``face_crop``).
2. **Landmarks.** Fixed regions of the face box hold the eyebrows, eyes, nose and lips. The
   fiducial points F1–F18 (``fiducial_points``):

   * eyes (F1–F4 left, F7–F10 right): the iris is the darkest point of the eye region; the
     two Shi–Tomasi corners farthest left and right on its row band are the eye's corners,
     and the strongest horizontal (Sobel ∂/∂y) edges just above and below the iris, in the
     columns beside it, the lids;
   * eyebrows (F5–F6 left, F11–F12 right): in the band above the eye, the brow's upper
     edge is where Sobel ∂/∂y is most negative (skin above, dark brow below; the hairline's
     edge has the other sign); the run of columns where it is strong, around the strongest,
     ends at the brow's inner and outer ends;
   * nose (F13–F14): the leftmost and rightmost Shi–Tomasi corners of the nose region (the
     nostrils' base; wrinkles add corners beside the bridge);
   * lips (F15–F18): the leftmost and rightmost Shi–Tomasi corners of the mouth region are
     the corners of the mouth; the outermost strong horizontal edges on the column between
     them, the top of the upper lip and the bottom of the lower one.
3. **Features** (``landmark_features``): the points in the frame of the eyes (origin between
   them, x along the eye line, unit the inter-ocular distance, so scale, shift and in-plane
   rotation drop out); every pairwise Euclidean distance d_ij = ‖F_i − F_j‖ (153), and the
   direction of each point seen from the origin as (cos θ_i, sin θ_i) (36; the angle itself
   would jump between π and −π for points on the eye line): 189 numbers.
4. **Classification**: the features are a table (``FaceLandmarkSource``, the dataset
   ``face_landmarks``) standardized with the train split's statistics, for the project's
   ``mlp`` trained by the one train loop.

The faces are ``data.faces``'s people, drawn at ``image_size`` (96 by default, the
detector's size) and split by identity; the features are extracted once and cached as an
``.npz`` in the TFDS data dir. A face the cascade misses is measured in the whole image, so
every image has features; ``detected`` says which were found.

OpenCV is the ``opencv`` extra (``opencv-python-headless>=4.8,<5``: the 5.x wheels ship no
cascade files).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import DataError, with_dataset_defaults
from bagtricks.data.faces import EXPRESSIONS, draw_people

CROP = 64  # The face crop's side, in pixels, where the regions below are measured.
NUM_POINTS = 18
NUM_FEATURES = NUM_POINTS * (NUM_POINTS - 1) // 2 + 2 * NUM_POINTS
CASCADE = "haarcascade_frontalface_default.xml"
_OPENCV_FIX = "pip install 'bagtricks[opencv]' (opencv-python-headless>=4.8,<5)"
# Regions as fractions of the face box: (x0, x1, y0, y1).
EYE_REGIONS = ((0.14, 0.48, 0.34, 0.56), (0.52, 0.86, 0.34, 0.56))
NOSE_REGION = (0.34, 0.66, 0.48, 0.67)
MOUTH_REGION = (0.22, 0.78, 0.62, 0.92)


def opencv():
  """The ``cv2`` module with its Haar cascades.

  Raises:
    DataError: OpenCV is missing, or is a build without ``CascadeClassifier`` or without the
      cascade files (the 5.x wheels).
  """
  try:
    import cv2  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f"the face landmarks need OpenCV, which is not installed: {_OPENCV_FIX}.")
  path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""), CASCADE)
  if not hasattr(cv2, "CascadeClassifier") or not os.path.exists(path):
    raise DataError(f"OpenCV {cv2.__version__} has no Haar cascade {CASCADE} (the 5.x wheels "
                    f"ship none): {_OPENCV_FIX}.")
  return cv2


def face_cascade():
  cv2 = opencv()
  return cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, CASCADE))


def preprocess(image: np.ndarray) -> np.ndarray:
  """3×3 Gaussian low-pass, then CLAHE (clip limit 2, 4×4 tiles); ``[H, W]`` uint8."""
  cv2 = opencv()
  clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
  return clahe.apply(cv2.GaussianBlur(np.ascontiguousarray(image), (3, 3), 0))


def detect_face(gray: np.ndarray, cascade, min_fraction: float = 1 / 3
                ) -> Optional[Tuple[int, int, int, int]]:
  """The largest Haar detection ``(x, y, w, h)`` at least ``min_fraction`` of the side."""
  side = int(min(gray.shape) * min_fraction)
  found = cascade.detectMultiScale(gray, scaleFactor=1.05, minNeighbors=3,
                                   minSize=(side, side))
  if len(found) == 0:
    return None
  return tuple(int(v) for v in found[np.argmax(found[:, 2] * found[:, 3])])


def face_crop(gray: np.ndarray, box: Optional[Tuple[int, int, int, int]]) -> np.ndarray:
  """The box (or, when ``None``, the whole image) resized to ``[CROP, CROP]`` uint8."""
  x, y, w, h = box if box is not None else (0, 0, gray.shape[1], gray.shape[0])
  return opencv().resize(gray[y:y + h, x:x + w], (CROP, CROP),
                         interpolation=opencv().INTER_AREA)


def _px(fraction: float) -> int:
  return int(round(fraction * CROP))


def _corners(crop: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
  """Shi–Tomasi corners (min eigenvalue of the structure tensor) in a region, ``[n, 2]``."""
  found = opencv().goodFeaturesToTrack(np.ascontiguousarray(crop[y0:y1, x0:x1]),
                                       maxCorners=10, qualityLevel=0.05, minDistance=2)
  return np.zeros((0, 2)) if found is None else found.reshape(-1, 2) + [x0, y0]


def _left_right(points: np.ndarray, fallback: Tuple[Tuple[float, float], ...]) -> list:
  if len(points) < 2:
    return [np.asarray(p, np.float64) for p in fallback]
  return [points[np.argmin(points[:, 0])], points[np.argmax(points[:, 0])]]


def _eye_and_brow(crop, rows_gradient, region) -> list:
  """F1–F6 of one side: eye corners, upper and lower lid, brow's two ends."""
  x0, x1, y0, y1 = (_px(v) for v in region)
  dark = opencv().blur(crop.astype(np.float32), (3, 3))[y0:y1, x0:x1]
  iy, ix = np.unravel_index(int(np.argmin(dark)), dark.shape)
  iy, ix = iy + y0, ix + x0
  found = _corners(crop, x0, x1, y0, y1)
  near = found[(np.abs(found[:, 1] - iy) <= _px(0.05)) & (np.abs(found[:, 0] - ix) <= _px(0.13))]
  corners = _left_right(near, ((ix - _px(0.09), iy), (ix + _px(0.09), iy)))
  # The lids: strongest horizontal edges within reach above and below the iris, in the
  # columns just beside it (the iris's own edges are in its column).
  columns = [c for c in (ix - 3, ix - 2, ix + 2, ix + 3) if 0 <= c < CROP]
  profile = np.abs(rows_gradient[:, columns]).sum(axis=1)
  reach = _px(0.06)
  top = max(iy - reach, 0) + int(np.argmax(profile[max(iy - reach, 0):iy]))
  bottom = iy + 1 + int(np.argmax(profile[iy + 1:iy + reach + 1]))
  # The brow: above the upper lid, the run of columns around the strongest upper edge.
  by0, by1 = max(_px(0.15), iy - _px(0.24)), max(top - 1, _px(0.15) + 2)
  bx0, bx1 = max(ix - _px(0.17), 0), min(ix + _px(0.17) + 1, CROP)
  upper_edge = np.maximum(-rows_gradient[by0:by1, bx0:bx1], 0.0)
  strength, row = upper_edge.max(axis=0), upper_edge.argmax(axis=0)
  strong = strength >= 0.4 * max(strength.max(), 1e-6)
  a = b = int(np.argmax(strength))
  while a > 0 and strong[a - 1]:
    a -= 1
  while b < len(strong) - 1 and strong[b + 1]:
    b += 1
  return corners + [(ix, top), (ix, bottom), (bx0 + a, by0 + row[a]), (bx0 + b, by0 + row[b])]


def fiducial_points(crop: np.ndarray) -> np.ndarray:
  """F1–F18 of a ``[CROP, CROP]`` face crop, ``[18, 2]`` (x, y) in crop pixels.

  Order: left eye (outer/inner corner by x, upper lid, lower lid), left brow (two ends),
  the same for the right side, nostrils (left, right), mouth (left corner, right corner, top,
  bottom).
  """
  cv2 = opencv()
  rows_gradient = cv2.Sobel(crop.astype(np.float32), cv2.CV_32F, 0, 1, ksize=3)
  points = []
  for region in EYE_REGIONS:
    points += _eye_and_brow(crop, rows_gradient, region)
  nx0, nx1, ny0, ny1 = (_px(v) for v in NOSE_REGION)
  nostrils = _left_right(_corners(crop, nx0, nx1, ny0, ny1), ((nx0, ny1), (nx1, ny1)))
  points += nostrils
  mx0, mx1, my0, my1 = (_px(v) for v in MOUTH_REGION)
  left, right = _left_right(_corners(crop, mx0, mx1, my0, my1), ((mx0, my0), (mx1, my0)))
  middle = int(round((left[0] + right[0]) / 2))
  # The lips' edges, searched below the nostrils (whose lower edge may reach the region).
  y0 = min(max(my0, int(max(p[1] for p in nostrils)) + 3), my1 - 2)
  profile = np.abs(rows_gradient[y0:my1, max(middle - 2, 0):middle + 3]).sum(axis=1)
  strong = np.nonzero(profile >= 0.35 * max(profile.max(), 1e-6))[0]
  points += [left, right, (middle, y0 + strong.min()), (middle, y0 + strong.max())]
  return np.asarray([np.asarray(p, np.float64) for p in points])


def landmark_features(points: np.ndarray) -> np.ndarray:
  """Distances and directions of the 18 points in the eyes' frame, ``[189]`` float32.

  With the eye centres e_L (mean of F1–F4) and e_R (F7–F10), origin o = (e_L + e_R) / 2 and
  rotation R that takes e_R − e_L onto the x axis, q_i = R (F_i − o) / ‖e_R − e_L‖. The
  features are d_ij = ‖q_i − q_j‖ for i < j, then cos θ_i and sin θ_i for each i, with
  θ_i = atan2(q_i,y, q_i,x).
  """
  left_eye, right_eye = points[0:4].mean(axis=0), points[6:10].mean(axis=0)
  axis = right_eye - left_eye
  scale = max(float(np.hypot(*axis)), 1e-3)
  angle = np.arctan2(axis[1], axis[0])
  rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
  q = (points - (left_eye + right_eye) / 2) @ rotation.T / scale
  i, j = np.triu_indices(len(q), 1)
  distances = np.hypot(*(q[i] - q[j]).T)
  theta = np.arctan2(q[:, 1], q[:, 0])
  return np.concatenate([distances, np.cos(theta), np.sin(theta)]).astype(np.float32)


def extract(images: np.ndarray) -> Dict[str, np.ndarray]:
  """Stages 1–3 on ``[n, H, W]`` or ``[n, H, W, 1]`` uint8 images.

  Returns:
    ``{'features': [n, 189] float32, 'points': [n, 18, 2] (crop pixels), 'detected': [n]
    bool}``.
  """
  cascade = face_cascade()
  features, points, detected = [], [], []
  for image in np.asarray(images).reshape(len(images), *np.shape(images)[1:3]):
    gray = preprocess(image)
    box = detect_face(gray, cascade)
    found = fiducial_points(face_crop(gray, box))
    features.append(landmark_features(found))
    points.append(found)
    detected.append(box is not None)
  return {"features": np.stack(features), "points": np.stack(points),
          "detected": np.asarray(detected)}


def render_faces(identities: int, test_identities: int, per_expression: int, size: int,
                 seed: int) -> Dict[str, Dict[str, np.ndarray]]:
  """``data.faces``'s people at ``size``: ``{split: {'image', 'label', 'person'}}``.

  Every person in every expression ``per_expression`` times (intensity in [0.6, 1.2], pose,
  lighting, noise); the last ``test_identities`` people are the test split.
  """
  if not 0 < test_identities < identities:
    raise DataError(f"config.dataset.test_identities={test_identities} must be in (0, "
                    f"config.dataset.identities={identities}).")
  images, labels, people = draw_people(identities, per_expression, size, seed)
  test = people >= identities - test_identities
  return {split: {"image": images[keep], "label": labels[keep], "person": people[keep]}
          for split, keep in (("train", ~test), ("test", test))}


def _cache_path(data_dir: str, settings: Dict) -> str:
  key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(data_dir, "face_landmarks", f"features_{key}.npz")


def landmark_arrays(data_dir: str, identities: int = 150, test_identities: int = 30,
                    per_expression: int = 4, image_size: int = 96, seed: int = 0
                    ) -> Dict[str, Dict[str, np.ndarray]]:
  """Rendered faces and their landmark features, cached in ``data_dir/face_landmarks``.

  Returns:
    ``{split: {'image' [n, S, S] uint8, 'label' [n] int32, 'person' [n], 'features'
    [n, 189], 'points' [n, 18, 2], 'detected' [n]}}``.
  """
  from bagtricks.data.bundled import _file_lock  # pylint: disable=import-outside-toplevel
  opencv()  # Named before the faces are drawn.
  settings = {"identities": identities, "test_identities": test_identities,
              "per_expression": per_expression, "image_size": image_size, "seed": seed,
              "crop": CROP, "version": 1}
  path = _cache_path(data_dir, settings)
  with _file_lock(path + ".lock"):
    if not os.path.exists(path):
      splits = render_faces(identities, test_identities, per_expression, image_size, seed)
      flat = {}
      for split, arrays in splits.items():
        arrays.update(extract(arrays["image"]))
        flat.update({f"{split}/{k}": v for k, v in arrays.items()})
      np.savez_compressed(path + ".tmp.npz", **flat)
      os.replace(path + ".tmp.npz", path)
  with np.load(path) as stored:
    splits = {}
    for name in stored.files:
      split, key = name.split("/")
      splits.setdefault(split, {})[key] = stored[name]
  return splits


class FaceLandmarkSource(ArraySource):
  """The landmark features of the generated faces as a table (``face_landmarks``).

  Reads ``config.dataset.identities``, ``test_identities``, ``per_expression``,
  ``image_size``, ``generator_seed`` and ``data_dir`` (``config_defaults``). Batches are
  ``{'features': float32 [..., 189], 'label': int32 [...]}``, standardized with the train
  split's mean and standard deviation.

  Attributes:
    arrays: every split's images, labels, people, points and ``detected`` flags.
  """

  config_defaults = {"identities": 150, "test_identities": 30, "per_expression": 4,
                     "image_size": 96, "generator_seed": 0}

  def __init__(self, config):
    from bagtricks.data.bundled import column_statistics  # pylint: disable=import-outside-toplevel
    from bagtricks.data.tfds_images import resolve_data_dir  # pylint: disable=import-outside-toplevel
    config = with_dataset_defaults(config, self.config_defaults)
    dc = config.dataset
    self.arrays = landmark_arrays(resolve_data_dir(dc.data_dir), dc.identities,
                                  dc.test_identities, dc.per_expression, dc.image_size,
                                  dc.generator_seed)
    mean, std = column_statistics(self.arrays["train"]["features"])
    splits = {split: {"features": ((a["features"] - mean) / std).astype(np.float32),
                      "label": a["label"]} for split, a in self.arrays.items()}
    super().__init__(config, splits, input_key="features", num_classes=len(EXPRESSIONS),
                     class_names=EXPRESSIONS)


def lfw_detection_rates(upscale: int = 4) -> Dict[str, float]:
  """The cascade on scikit-image's ``lfw_subset``: 100 real faces, 100 non-faces (25×25).

  Each image is upscaled ``upscale``× (the cascade's smallest window is 24×24) and
  preprocessed as the generated faces are.

  Returns:
    ``{'faces_detected': share of the faces with a detection, 'false_detections': share of
    the non-faces with one}``.
  """
  from skimage import data as skimage_data  # pylint: disable=import-outside-toplevel
  cv2, cascade = opencv(), face_cascade()
  images = skimage_data.lfw_subset()  # [200, 25, 25] float in [0, 1]; faces first.
  found = []
  for image in images:
    big = cv2.resize(np.round(image * 255).astype(np.uint8), None, fx=upscale, fy=upscale,
                     interpolation=cv2.INTER_CUBIC)
    found.append(detect_face(preprocess(big), cascade) is not None)
  found = np.asarray(found)
  return {"faces_detected": float(found[:100].mean()),
          "false_detections": float(found[100:].mean())}
