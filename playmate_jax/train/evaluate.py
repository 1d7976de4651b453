"""Held-out evaluation during training: sample motion from audio, compare with the truth, write numbers and a plot.

Metrics (averaged over the held-out clips):
  mouth_corr           correlation over time between sampled and true mouth opening (audio guidance w_audio)
  mouth_corr_no_audio  the same with the audio condition dropped (should stay near zero)
  pose_std             spread over time of the generated head rotation (degrees, mean of pitch/yaw/roll)
  pose_std_true        the same for the ground truth
  exp_l1               mean absolute error of the generated expression (keypoint units)
  exp_l1_no_emotion    stage 2: exp_l1 with the emotion dropped (exp_l1 itself guided by the clip's emotion label)
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import numpy as np

from playmate_jax import motion
from playmate_jax.generator import NULL_EMOTION

# sample(params, audio [T, D], identity [132], key, w_audio, emotion: int | None) -> normalized motion [T, 69]
SampleFn = Callable[[dict, np.ndarray, np.ndarray, jax.Array, float, int | None], np.ndarray]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a - a.mean(), b - b.mean()
  denom = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / denom) if denom > 0 else 0.0


def _denormalized(vec: np.ndarray, stats) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in motion.unpack_motion(motion.denormalize_motion(vec, stats)).items()}


def _sample_clip(sample: SampleFn, params, clip: dict, key: jax.Array, w_audio: float,
                 emotion: int | None) -> dict[str, np.ndarray]:
  return _denormalized(sample(params, clip["audio"], clip["identity"], key, w_audio, emotion), clip["stats"])


def evaluate(sample: SampleFn, params, clips: list[dict], key: jax.Array, w_audio: float, emotion: bool = False):
  """Returns (metrics, curves); curves hold per-clip arrays for plotting. emotion: the model is stage 2's, sampled
  with each clip's emotion label (unknown: the null emotion), and the audio-free sample without emotion."""
  rows, curves = [], []
  null = NULL_EMOTION if emotion else None
  for i, clip in enumerate(clips):
    sample_clip = functools.partial(_sample_clip, sample, params, clip, jax.random.fold_in(key, i))
    gen = sample_clip(w_audio, clip["emotion"] if emotion else None)
    gen0 = sample_clip(0.0, null)
    true = _denormalized(clip["motion"], clip["stats"])
    m_gen, m_gen0, m_true = (np.asarray(motion.mouth_opening(d["exp"])) for d in (gen, gen0, true))
    rot = lambda d: np.stack([d["pitch"], d["yaw"], d["roll"]], -1)
    rows.append({
        "mouth_corr": _corr(m_gen, m_true),
        "mouth_corr_no_audio": _corr(m_gen0, m_true),
        "pose_std": float(rot(gen).std(0).mean()),
        "pose_std_true": float(rot(true).std(0).mean()),
        "exp_l1": float(np.abs(gen["exp"] - true["exp"]).mean()),
    })
    if emotion:
      rows[-1]["exp_l1_no_emotion"] = float(np.abs(sample_clip(w_audio, null)["exp"] - true["exp"]).mean())
    curves.append({"clip_id": clip["clip_id"], "mouth": (m_gen, m_gen0, m_true), "pose": (rot(gen), rot(true))})
  metrics = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  return metrics, curves


def plot(curves: list[dict], path: str, step: int, max_clips: int = 3) -> None:
  """Generated vs true mouth opening and head rotation over time, one row per clip."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves = curves[:max_clips]
  fig, axes = plt.subplots(len(curves), 2, figsize=(13, 2.8 * len(curves)), squeeze=False)
  for row, c in zip(axes, curves):
    m_gen, m_gen0, m_true = c["mouth"]
    t = np.arange(len(m_true)) / 25.0
    row[0].plot(t, m_true, "k", lw=1.5, label="true")
    row[0].plot(t, m_gen, "C0", lw=1.2, label="generated")
    row[0].plot(t, m_gen0, "C3", lw=0.8, alpha=0.7, label="generated, no audio")
    row[0].set_title(f"{c['clip_id']}: mouth opening")
    row[0].legend(loc="upper right", fontsize=7)
    gen, true = c["pose"]
    for j, name in enumerate(("pitch", "yaw", "roll")):
      row[1].plot(t, true[:, j], f"C{j}", lw=1.5, alpha=0.5, label=f"{name} true")
      row[1].plot(t, gen[:, j], f"C{j}--", lw=1.2, label=f"{name} generated")
    row[1].set_title("head rotation (degrees)")
    row[1].legend(loc="upper right", fontsize=7, ncol=3)
  for ax in axes[-1]:
    ax.set_xlabel("seconds")
  fig.suptitle(f"held-out samples at step {step}")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
