"""A small motion-space emotion classifier, the yardstick of evaluation's emotion accuracy.

Feature of a clip: the mean over its frames of its expression minus its speaker's reference expression (the
dataset statistics' `reference_expression`), [63] keypoint units, so that what identifies the speaker cancels
and what the clip's emotion adds remains. The classifier is softmax regression on those features, standardized
with the training features' mean and std, trained by full-batch gradient descent with an L2 penalty from zero
weights: deterministic, numpy only. It is trained on the labelled clips of the training split (ground truth)
and applied to ground-truth and generated clips alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from playmate_jax.motion import EMOTIONS, EXP_DIM


def clip_feature(exp: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """[63] float64: mean over frames of exp [T, 21, 3] (or [T, 63]) minus the speaker's reference [63]."""
  exp = np.asarray(exp, np.float64).reshape(-1, EXP_DIM)
  return exp.mean(axis=0) - np.asarray(reference, np.float64)


@dataclasses.dataclass(frozen=True)
class EmotionClassifier:
  """Softmax regression over len(EMOTIONS) classes on standardized clip features."""
  mean: np.ndarray      # [63]
  std: np.ndarray       # [63]
  weights: np.ndarray   # [63, 8]
  bias: np.ndarray      # [8]

  def logits(self, features: np.ndarray) -> np.ndarray:
    """[N, 8] class scores of clip features [N, 63]."""
    return ((np.asarray(features, np.float64) - self.mean) / self.std) @ self.weights + self.bias

  def predict(self, features: np.ndarray) -> np.ndarray:
    """[N] int labels (MEAD order) of clip features [N, 63]."""
    return np.argmax(self.logits(features), axis=-1)

  def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of clips whose predicted label is `labels` [N]."""
    return float(np.mean(self.predict(features) == np.asarray(labels)))


def _softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def train_classifier(features: np.ndarray, labels: np.ndarray, *, steps: int = 500, lr: float = 0.5,
                     l2: float = 1e-3) -> EmotionClassifier:
  """Fits softmax regression to clip features [N, 63] and labels [N] (0..7) by `steps` gradient steps of size lr
  on the mean cross-entropy + l2/2 |W|^2 (bias not penalized)."""
  x = np.asarray(features, np.float64)
  y = np.asarray(labels, np.int64)
  if x.ndim != 2 or len(x) != len(y) or not len(y):
    raise ValueError(f"features {x.shape} and labels {y.shape} must be [N, D] and [N] with N > 0.")
  if y.min() < 0 or y.max() >= len(EMOTIONS):
    raise ValueError(f"labels must be in 0..{len(EMOTIONS) - 1}.")
  mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-8)
  z = (x - mean) / std
  onehot = np.eye(len(EMOTIONS))[y]
  w, b = np.zeros((x.shape[1], len(EMOTIONS))), np.zeros(len(EMOTIONS))
  for _ in range(steps):
    g = (_softmax(z @ w + b) - onehot) / len(z)
    w -= lr * (z.T @ g + l2 * w)
    b -= lr * g.sum(axis=0)
  return EmotionClassifier(mean=mean, std=std, weights=w, bias=b)
