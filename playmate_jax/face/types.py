"""What every face backend returns: one `Face` per face found, in the image's pixel coordinates.

Pixel coordinates follow OpenCV's (and LivePortrait's) convention: pixel (i, j) has its centre at x = j, y = i.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Landmark layouts the crop and the eye/lip ratios understand, by number of points.
LAYOUTS = {5: "5 points (eyes, nose, lip corners)", 68: "iBUG 68", 106: "insightface 106",
           203: "LivePortrait 203", 468: "MediaPipe face mesh 468"}


@dataclasses.dataclass(frozen=True)
class Face:
  """A face: `box` (x0, y0, x1, y1) in pixels, detector `score` in [0, 1], `landmarks` [N, 2] (x, y) pixels.

  `crop_landmarks` [M, 2] are the points LivePortrait's crop is computed from (see face.crop): the landmarks
  themselves where the layout is one LivePortrait reads (5, 68, 106, 203 points), else a subset mapped to one of
  those layouts (the face mesh's 468 points give iBUG's 68)."""
  box: np.ndarray
  score: float
  landmarks: np.ndarray
  crop_landmarks: np.ndarray

  @property
  def area(self) -> float:
    x0, y0, x1, y1 = (float(v) for v in self.box)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)
