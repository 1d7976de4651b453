"""Normalization statistics of a dataset, computed while it is written and stored beside it (stats.json).

Expression: global mean/std over all frames (63). Pose (pitch, yaw, roll, tx, ty, scale): mean/std per
speaker, Playmate's adaptive per-identity normalization; an unseen speaker gets the median over speakers
of the means and of the standard deviations. Audio features: global per-dimension mean/std.
Standard deviations are stored floored at `playmate_jax.motion.STD_FLOOR`.

Reference expression per speaker (63): the mean expression of the speaker's frames in clips labelled neutral,
or of all the speaker's frames where none is labelled neutral (or no labels are given to `add`). It stands in for the
source portrait's expression during training (config.data.source_expression = "reference"), because a user's
portrait is usually neutral while a training clip's own frames carry the clip's emotion. An unseen speaker
gets the mean over speakers.
"""

from collections.abc import Callable, Mapping
import dataclasses
import json
import logging
import os

import numpy as np

from playmate_jax.errors import UserError
from playmate_jax.motion import EMOTIONS, EXP_DIM, MOTION_DIM, STD_FLOOR, MotionStats

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"
NEUTRAL = EMOTIONS.index("neutral")


def motion_vector(motion: Mapping[str, np.ndarray]) -> np.ndarray:
  """Numpy `pack_motion` for the input pipeline: [T, 69] float32 from the dataset's motion fields."""
  exp = np.asarray(motion["exp"], np.float32)
  t = np.asarray(motion["t"], np.float32)
  pose = [np.asarray(motion[k], np.float32) for k in ("pitch", "yaw", "roll")] + [t[..., 0], t[..., 1]]
  pose = np.stack(pose + [np.asarray(motion["scale"], np.float32)], axis=-1)
  return np.concatenate([exp.reshape(exp.shape[:-2] + (EXP_DIM,)), pose], axis=-1)


def identity_vector(source_motion: np.ndarray, kp: np.ndarray) -> np.ndarray:
  """The model's identity condition [..., 132]: normalized source motion [..., 69], then canonical kp [..., 21, 3]."""
  kp = np.asarray(kp, np.float32)
  return np.concatenate([np.asarray(source_motion, np.float32), kp.reshape(kp.shape[:-2] + (-1,))], axis=-1)


class _Moments:
  """Count, mean and sum of squared deviations per dimension, merged batch by batch (Chan et al.)."""

  def __init__(self):
    self.n, self.mean, self.m2 = 0, 0.0, 0.0

  def add(self, x: np.ndarray) -> None:
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    n, mean = len(x), x.mean(axis=0)
    m2 = ((x - mean) ** 2).sum(axis=0)
    total = self.n + n
    delta = mean - self.mean
    self.mean = self.mean + delta * n / total
    self.m2 = self.m2 + m2 + delta ** 2 * self.n * n / total
    self.n = total

  def std(self) -> np.ndarray:
    return np.maximum(np.sqrt(self.m2 / self.n), STD_FLOOR)


@dataclasses.dataclass(frozen=True)
class DatasetStats:
  """Statistics of one dataset (float32 numpy arrays); see the module docstring."""
  exp_mean: np.ndarray                 # [63]
  exp_std: np.ndarray                  # [63]
  pose_mean: dict[str, np.ndarray]     # speaker_id -> [6]
  pose_std: dict[str, np.ndarray]      # speaker_id -> [6]
  default_pose_mean: np.ndarray        # [6] median over speakers, for unseen identities
  default_pose_std: np.ndarray         # [6]
  audio_mean: np.ndarray               # [D]
  audio_std: np.ndarray                # [D]
  kp_mean: np.ndarray                  # [63] mean canonical keypoints: a neutral identity for sampling
  num_frames: int
  exp_reference: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)   # speaker_id -> [63]

  def reference_expression(self, speaker_id: str | None) -> np.ndarray:
    """The speaker's reference expression [63] (see the module docstring); for an unseen speaker the mean over
    speakers, and the global mean for statistics written before references existed."""
    if speaker_id in self.exp_reference:
      return self.exp_reference[speaker_id]
    if self.exp_reference:
      return np.mean(np.stack(list(self.exp_reference.values())), axis=0).astype(np.float32)
    return self.exp_mean

  def pose(self, speaker_id: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) [6] of the speaker's pose, or the defaults for an unseen (or None) speaker."""
    if speaker_id in self.pose_mean:
      return self.pose_mean[speaker_id], self.pose_std[speaker_id]
    return self.default_pose_mean, self.default_pose_std

  def motion_stats(self, speaker_id: str | None = None) -> MotionStats:
    """MotionStats for normalize_motion / denormalize_motion of this speaker's motion."""
    mean, std = self.pose(speaker_id)
    return MotionStats(exp_mean=self.exp_mean, exp_std=self.exp_std, pose_mean=mean, pose_std=std)

  def source_motion_stats(self, source_pose: np.ndarray) -> MotionStats:
    """MotionStats for an identity outside the data (a new portrait): pose centred on the source's own pose
    [6], with the median per-speaker pose spread; expression statistics are global anyway."""
    return MotionStats(exp_mean=self.exp_mean, exp_std=self.exp_std,
                       pose_mean=np.asarray(source_pose, np.float32), pose_std=self.default_pose_std)

  def normalize_motion(self, v: np.ndarray, speaker_id: str | None) -> np.ndarray:
    """Numpy `normalize_motion` of motion vectors [..., 69] with this speaker's statistics."""
    mean, std = self.pose(speaker_id)
    mean = np.concatenate([self.exp_mean, mean])
    std = np.maximum(np.concatenate([self.exp_std, std]), STD_FLOOR)
    return ((np.asarray(v, np.float32) - mean) / std).astype(np.float32)

  def normalize_audio(self, features: np.ndarray) -> np.ndarray:
    """(features - mean) / std per dimension, float32."""
    return ((np.asarray(features, np.float32) - self.audio_mean) / self.audio_std).astype(np.float32)


class StatsAccumulator:
  """Streams clips in; `finalize` returns their DatasetStats."""

  def __init__(self):
    self._exp, self._audio, self._kp, self._pose = _Moments(), _Moments(), _Moments(), {}
    self._exp_speaker, self._exp_neutral = {}, {}

  def add(self, speaker_id: str, motion: Mapping[str, np.ndarray], features: np.ndarray,
          emotion: int | None = None) -> None:
    """One clip; `emotion` (its label, -1 unknown) lets the speaker's reference use its neutral clips only."""
    v = motion_vector(motion)
    self._exp.add(v[:, :EXP_DIM])
    self._pose.setdefault(speaker_id, _Moments()).add(v[:, EXP_DIM:])
    self._exp_speaker.setdefault(speaker_id, _Moments()).add(v[:, :EXP_DIM])
    if emotion is not None and int(emotion) == NEUTRAL:
      self._exp_neutral.setdefault(speaker_id, _Moments()).add(v[:, :EXP_DIM])
    self._audio.add(np.asarray(features, np.float32))
    self._kp.add(np.asarray(motion["kp"], np.float32).reshape(-1, EXP_DIM))

  def finalize(self) -> DatasetStats:
    if not self._exp.n:
      raise ValueError("No frames were given to compute normalization statistics from.")
    f32 = lambda x: np.asarray(x, np.float32)
    means = {s: f32(m.mean) for s, m in self._pose.items()}
    stds = {s: f32(m.std()) for s, m in self._pose.items()}
    reference = {s: f32(self._exp_neutral.get(s, m).mean) for s, m in self._exp_speaker.items()}
    return DatasetStats(
        exp_mean=f32(self._exp.mean), exp_std=f32(self._exp.std()), pose_mean=means, pose_std=stds,
        default_pose_mean=f32(np.median(np.stack(list(means.values())), axis=0)),
        default_pose_std=f32(np.median(np.stack(list(stds.values())), axis=0)),
        audio_mean=f32(self._audio.mean), audio_std=f32(self._audio.std()), kp_mean=f32(self._kp.mean),
        num_frames=int(self._exp.n), exp_reference=reference)


def _to_record(stats: DatasetStats) -> dict:
  """The JSON record of `stats` (lists of floats), as save_stats writes it."""
  lists = lambda d: {k: np.asarray(v).tolist() for k, v in d.items()}
  record = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
  return {k: lists(v) if isinstance(v, dict) else (v if isinstance(v, int) else np.asarray(v).tolist())
          for k, v in record.items()}


def save_stats(stats: DatasetStats, path: str | os.PathLike) -> None:
  """Writes the statistics as JSON."""
  record = _to_record(stats)
  record["motion_dim"] = MOTION_DIM
  with open(path, "w") as f:
    json.dump(record, f)


# The fields of stats.json that every version wrote, and those that later versions added (`upgrade_stats` fills
# them): kp_mean from the second commit on (3e032ca), exp_reference with stage 2's neutral source (f57203c).
FIRST_FIELDS = ("exp_mean", "exp_std", "pose_mean", "pose_std", "default_pose_mean", "default_pose_std",
                "audio_mean", "audio_std", "num_frames")
ADDED_FIELDS = ("kp_mean", "exp_reference")


def refresh(path: str) -> str:
  """How to replace the statistics file `path` by a complete one: a dataset's (stats.json) is rewritten with the
  dataset; a training run's copy (dataset_stats.json) is the copy of its dataset's."""
  if os.path.basename(path) == STATS_FILE:
    return (f"delete {os.path.dirname(path)} and rerun pipelines/preprocess.py with the arguments that wrote it (it "
            "reuses its per-video results)")
  return f"copy the {STATS_FILE} of the dataset the run was trained on to {path}"


def upgrade_stats(record: Mapping, path: str, recompute: Callable[[int], DatasetStats] | None = None) -> dict:
  """The record of a stats.json file (`path`, as read from JSON) with every field of ADDED_FIELDS it lacks filled
  in; values present are never changed, and a record that has them all is returned as it is.

  With `recompute` (given the record's num_frames, which tells the split they came from, it computes the statistics
  again from the dataset's clips, exactly as the writer does; data.loader passes it), the missing fields are taken
  from it, with one warning saying how to store them. Without it (a training run's copy, dataset_stats.json, read
  where its dataset may not be), exp_reference is left empty: `DatasetStats.reference_expression` then falls back
  to the global expression mean (nothing reads a run's references: training and evaluation take the dataset's
  own), and a missing kp_mean is a UserError. A field that every version wrote, missing, is a UserError naming the
  file: it is damaged, not old.
  """
  lost = [k for k in FIRST_FIELDS if k not in record]
  if lost:
    raise UserError(f"Normalization statistics {path} lack {lost[0]}, which every version of the project wrote, so "
                    f"the file is damaged; {refresh(path)}.")
  missing = [k for k in ADDED_FIELDS if k not in record]
  if not missing:
    return dict(record)
  if recompute is not None:
    fresh = _to_record(recompute(int(record["num_frames"])))
    log.warning("Normalization statistics %s were written by an older version without %s; they were computed "
                "again from the dataset's clips, which happens at every start until the dataset is rewritten: to "
                "store them, %s.", path, " and ".join(missing), refresh(path))
    return {**record, **{k: fresh[k] for k in missing}}
  if "kp_mean" in missing:
    raise UserError(f"Normalization statistics {path} lack kp_mean (the project's first version wrote no mean "
                    "identity), and the dataset they came from is not at hand to compute it; train this run again "
                    "with the current code.")
  return {**record, "exp_reference": {}}


def read_stats(path: str | os.PathLike, recompute: Callable[[int], DatasetStats] | None = None) -> DatasetStats:
  """Reads statistics written by `save_stats` of this or an older version (`upgrade_stats`, which `recompute` is
  passed to); UserError if the file is missing, unreadable or damaged."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"Normalization statistics {path} are missing; {refresh(path)}.")
  try:
    with open(path) as f:
      r = json.load(f)
    if not isinstance(r, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as e:
    raise UserError(f"Normalization statistics {path} could not be read ({type(e).__name__}); "
                    f"{refresh(path)}.") from None
  r = upgrade_stats(r, path, recompute)
  arr = lambda x: np.asarray(x, np.float32)
  return DatasetStats(
      exp_mean=arr(r["exp_mean"]), exp_std=arr(r["exp_std"]),
      pose_mean={k: arr(v) for k, v in r["pose_mean"].items()},
      pose_std={k: arr(v) for k, v in r["pose_std"].items()},
      default_pose_mean=arr(r["default_pose_mean"]), default_pose_std=arr(r["default_pose_std"]),
      audio_mean=arr(r["audio_mean"]), audio_std=arr(r["audio_std"]), kp_mean=arr(r["kp_mean"]),
      num_frames=int(r["num_frames"]), exp_reference={k: arr(v) for k, v in r["exp_reference"].items()})
