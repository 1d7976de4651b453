"""Held-out evaluation: sample motion from audio, compare with the truth, write numbers and plots.

`evaluate` and `plot` run during training (every config.train.eval_every steps); `evaluate_clips` and
`plot_emotion` are the fuller evaluation of `pipelines/evaluate.py` (see `evaluate_clips` for its metrics).

Metrics of `evaluate` (averaged over the held-out clips): every one of `motion_metrics` (mouth_corr, kp_dist,
pose_std, pose_std_true, pose_dist, jitter, jitter_true; the same function evaluate_clips uses, so training's and
evaluate.py's numbers agree), and
  mouth_corr_no_audio  mouth_corr with the audio condition dropped (should stay near zero)
  exp_l1               mean absolute error of the generated expression (keypoint units)
  exp_l1_no_emotion    stage 2: exp_l1 with the emotion dropped (exp_l1 itself guided by the clip's emotion label)
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import numpy as np

from playmate_jax import motion
from playmate_jax.generator import NULL_EMOTION
from playmate_jax.train import emotion_classifier as classifier_lib

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
    # The same per-clip metrics as evaluate_clips (pipelines/evaluate.py), computed by the same function.
    rows.append({**motion_metrics(gen, true, clip["kp"]), "mouth_corr_no_audio": _corr(m_gen0, m_true),
                 "exp_l1": float(np.abs(gen["exp"] - true["exp"]).mean())})
    if emotion:
      rows[-1]["exp_l1_no_emotion"] = float(np.abs(sample_clip(w_audio, null)["exp"] - true["exp"]).mean())
    curves.append({"clip_id": clip["clip_id"], "mouth": (m_gen, m_gen0, m_true),
                   "pose": (rotation(gen), rotation(true))})
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


# -- the full evaluation of pipelines/evaluate.py ----------------------------------------------------------------------

POSE_AXES = ("pitch", "yaw", "roll")

# sample(audio [B, T, D], identity [B, 132], key, w_audio, emotion [B] int | None) -> normalized motion [B, T, 69]
BatchSampleFn = Callable[[np.ndarray, np.ndarray, jax.Array, float, np.ndarray | None], np.ndarray]


def keypoints(fields: dict[str, np.ndarray], kp: np.ndarray) -> np.ndarray:
  """[T, 21, 3] keypoints x = s * (kp @ R + exp) + t of denormalized motion fields, with the source's kp [21, 3]."""
  return np.asarray(motion.transform_keypoints(kp, fields["pitch"], fields["yaw"], fields["roll"], fields["exp"],
                                               fields["t"], fields["scale"]))


def rotation(fields: dict[str, np.ndarray]) -> np.ndarray:
  """[T, 3] pitch, yaw, roll in degrees."""
  return np.stack([np.asarray(fields[k]) for k in POSE_AXES], axis=-1)


def jitter(x: np.ndarray) -> float:
  """Mean absolute second difference over time of keypoints [T, 21, 3] (keypoint units per frame^2)."""
  return float(np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean()) if len(x) > 2 else 0.0


def motion_metrics(gen: dict[str, np.ndarray], true: dict[str, np.ndarray], kp: np.ndarray) -> dict[str, float]:
  """One clip's generated vs true motion (denormalized fields): mouth_corr (correlation over time of the mouth
  opening), kp_dist (mean L2 distance of the keypoints, both made with the source kp), pose_std / pose_std_true
  (std over time of pitch, yaw, roll, averaged over the three, degrees), pose_dist (mean absolute difference of
  pitch, yaw, roll, degrees), jitter / jitter_true (mean |second difference| of the keypoints)."""
  x_gen, x_true = keypoints(gen, kp), keypoints(true, kp)
  r_gen, r_true = rotation(gen), rotation(true)
  return {
      "mouth_corr": _corr(np.asarray(motion.mouth_opening(gen["exp"])), np.asarray(motion.mouth_opening(true["exp"]))),
      "kp_dist": float(np.linalg.norm(x_gen - x_true, axis=-1).mean()),
      "pose_std": float(r_gen.std(0).mean()),
      "pose_std_true": float(r_true.std(0).mean()),
      "pose_dist": float(np.abs(r_gen - r_true).mean()),
      "jitter": jitter(x_gen),
      "jitter_true": jitter(x_true),
  }


def sample_many(sample: BatchSampleFn, clips: list[dict], emotion: int | list[int] | None, key: jax.Array,
                w_audio: float, batch_size: int, bar=None) -> list[np.ndarray]:
  """Normalized motion [T_i, 69] for every clip, batch_size clips at a time, with one emotion for all (an int),
  one per clip (a list) or none. Batch k is sampled with key fold_in(key, k) whatever the emotion, so that a clip
  sampled under two emotions starts from the same noise. A batch is filled up to batch_size (one compiled shape)
  and its audio zero-padded to its longest clip; each result is cut to its clip's length."""
  out = []
  for k, lo in enumerate(range(0, len(clips), batch_size)):
    idx = list(range(lo, min(lo + batch_size, len(clips))))
    full = idx + [idx[0]] * (batch_size - len(idx))
    members = [clips[i] for i in full]
    audio = np.zeros((len(full), max(c["num_frames"] for c in members), members[0]["audio"].shape[-1]), np.float32)
    for b, c in enumerate(members):
      audio[b, :c["num_frames"]] = c["audio"]
    identity = np.stack([c["identity"] for c in members])
    labels = None if emotion is None else np.broadcast_to(np.asarray(emotion, np.int32), (len(clips),))[full]
    result = np.asarray(sample(audio, identity, jax.random.fold_in(key, k), w_audio, labels))
    out += [result[b, :clips[i]["num_frames"]] for b, i in enumerate(idx)]
    if bar is not None:
      bar.update(len(idx))
  return out


def _pose_summary(fields: list[dict[str, np.ndarray]]) -> dict[str, list[float]]:
  """Pose mean over all frames and std over time (averaged over clips) of pitch, yaw, roll, degrees."""
  rots = [rotation(f) for f in fields]
  return {"mean": np.concatenate(rots).mean(0).tolist(), "std": np.mean([r.std(0) for r in rots], axis=0).tolist()}


def _confusion(wanted: list[int], predicted: list[int]) -> list[list[int]]:
  m = np.zeros((len(motion.EMOTIONS),) * 2, np.int64)
  for w, p in zip(wanted, predicted):
    m[w, p] += 1
  return m.tolist()


def evaluate_clips(sample: BatchSampleFn, clips: list[dict], key: jax.Array, *, w_audio: float,
                   classifier: classifier_lib.EmotionClassifier | None = None,
                   references: dict[str, np.ndarray] | None = None, batch_size: int = 16,
                   progress: bool = False) -> tuple[dict[str, Any], list[dict]]:
  """Samples every clip and returns (metrics, curves for `plot`).

  Stage 1 (classifier None): each clip is sampled with audio guidance w_audio and with the audio dropped. Metrics,
  averaged over clips: those of `motion_metrics` and mouth_corr_no_audio.

  Stage 2 (classifier given, with `references`: speaker_id -> reference expression [63]): each clip is also sampled
  under each of the eight emotions (the sweep; `sample` guides them with its w_emotion) and with the emotion
  dropped (null). The motion metrics are those of each clip sampled with its own label (the null emotion for an
  unlabelled clip); mouth_corr_null is the null sample's. The emotion metrics classify each sample's clip
  feature: emotion_acc (labelled clips sampled with their label, recognised as it), emotion_acc_null (the null
  samples recognised as the clip's label: about chance if the label is what carries the emotion),
  emotion_acc_sweep (every clip under every emotion), classifier_acc_true (the ground truth of the labelled clips)
  and emotion_chance (1/8); pose_by_emotion (per requested emotion and null: pose mean and std over time of
  pitch, yaw, roll, over the same clips, audio and noise), pose_shift_by_emotion (largest |mean difference| from
  null over emotions and axes, degrees), pose_shift_by_seed (the same between null and null from other noise: the
  yardstick of chance), pose_std_change_by_emotion (largest relative change of the std from null's),
  emotion_confusion (label, null, ground truth and sweep confusion matrices, rows the wanted emotion, columns the
  recognised one) and the clip counts.
  """
  from tqdm.auto import tqdm

  stage2 = classifier is not None
  n = len(clips)
  emotions = range(len(motion.EMOTIONS)) if stage2 else ()
  runs = 2 + (len(emotions) + 1) * stage2  # every clip is sampled once per run (conditions, emotions, seeds)
  bar = tqdm(total=runs * n, desc=f"evaluating {n} clips x {runs} runs", unit="sample", disable=not progress)
  fields = lambda vs: [_denormalized(v, c["stats"]) for v, c in zip(vs, clips)]
  with bar:  # every run from the same noise (but one): differences between them come from the conditions alone
    gen0 = fields(sample_many(sample, clips, None, key, 0.0, batch_size, bar))
    null = fields(sample_many(sample, clips, None, key, w_audio, batch_size, bar))
    sweep = [fields(sample_many(sample, clips, e, key, w_audio, batch_size, bar)) for e in emotions]
    reseeded = fields(sample_many(sample, clips, None, jax.random.fold_in(key, 1), w_audio, batch_size, bar)
                      ) if stage2 else []
  true = fields([c["motion"] for c in clips])
  labels = [c["emotion"] for c in clips]
  gen = [sweep[labels[i]][i] if stage2 and labels[i] >= 0 else null[i] for i in range(n)]

  rows, curves = [], []
  mouth = lambda d: np.asarray(motion.mouth_opening(d["exp"]))
  for i, c in enumerate(clips):
    row = motion_metrics(gen[i], true[i], c["kp"])
    row["mouth_corr_no_audio"] = _corr(mouth(gen0[i]), mouth(true[i]))
    if stage2:
      row["mouth_corr_null"] = _corr(mouth(null[i]), mouth(true[i]))
      row["mouth_corr_sweep"] = float(np.mean([_corr(mouth(s[i]), mouth(true[i])) for s in sweep]))
    rows.append(row)
    curves.append({"clip_id": c["clip_id"], "mouth": (mouth(gen[i]), mouth(gen0[i]), mouth(true[i])),
                   "pose": (rotation(gen[i]), rotation(true[i]))})
  metrics: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  metrics["num_clips"] = n
  if stage2:
    feature = lambda d, c: classifier_lib.clip_feature(d["exp"], references[c["speaker_id"]])
    predict = lambda ds: classifier.predict(np.stack([feature(d, c) for d, c in zip(ds, clips)])).tolist()
    metrics.update(_emotion_metrics(predict, labels, gen, null, true, sweep))
    metrics.update(_pose_metrics(null, sweep, reseeded))
  return metrics, curves


def _emotion_metrics(predict: Callable, labels: list[int], gen: list, null: list, true: list,
                     sweep: list[list]) -> dict[str, Any]:
  """The emotion metrics of `evaluate_clips` from the predicted labels of each run's clips."""
  n = len(labels)
  labelled = [i for i in range(n) if labels[i] >= 0]
  pick = lambda xs: [xs[i] for i in labelled]
  wanted = pick(labels)
  got = {"label": pick(predict(gen)), "null": pick(predict(null)), "true": pick(predict(true))}
  got_sweep = [predict(s) for s in sweep]
  accuracy = lambda p, w: float(np.mean(np.asarray(p) == np.asarray(w))) if len(w) else float("nan")
  confusion = {k: _confusion(wanted, v) for k, v in got.items()}
  confusion["sweep"] = _confusion([e for e in range(len(sweep)) for _ in range(n)], sum(got_sweep, []))
  return dict(emotion_acc=accuracy(got["label"], wanted), emotion_acc_null=accuracy(got["null"], wanted),
              emotion_acc_sweep=float(np.mean([accuracy(p, [e] * n) for e, p in enumerate(got_sweep)])),
              classifier_acc_true=accuracy(got["true"], wanted), emotion_chance=1.0 / len(motion.EMOTIONS),
              num_labelled_clips=len(labelled), emotion_confusion=confusion)


def _pose_metrics(null: list, sweep: list[list], reseeded: list) -> dict[str, Any]:
  """The head-pose-per-emotion metrics of `evaluate_clips`."""
  by_emotion = {name: _pose_summary(s) for name, s in zip(motion.EMOTIONS, sweep)}
  by_emotion["null"] = _pose_summary(null)
  shift = lambda a, b: float(np.abs(np.subtract(a["mean"], b["mean"])).max())
  change = lambda a, b: float(np.abs(np.divide(a["std"], b["std"]) - 1.0).max())
  return dict(pose_by_emotion=by_emotion,
              pose_shift_by_emotion=max(shift(by_emotion[e], by_emotion["null"]) for e in motion.EMOTIONS),
              pose_shift_by_seed=shift(_pose_summary(reseeded), by_emotion["null"]),
              pose_std_change_by_emotion=max(change(by_emotion[e], by_emotion["null"]) for e in motion.EMOTIONS))


def plot_emotion(metrics: dict[str, Any], path: str) -> None:
  """Confusion matrices (label, null, sweep) and the pose mean +- std over time per requested emotion."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(motion.EMOTIONS)
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
  titles = {"label": f"with the label: acc {metrics['emotion_acc']:.2f}",
            "null": f"emotion dropped: acc {metrics['emotion_acc_null']:.2f}",
            "sweep": f"every clip x every emotion: acc {metrics['emotion_acc_sweep']:.2f}"}
  for ax, (kind, title) in zip(axes, titles.items()):
    m = np.asarray(metrics["emotion_confusion"][kind], np.float64)
    ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("recognised")
    ax.set_ylabel("wanted (null: the clip's label)")
    ax.set_title(title, fontsize=9)
  ax = axes[-1]
  groups = names + ["null"]
  for j, axis in enumerate(POSE_AXES):
    mean = [metrics["pose_by_emotion"][g]["mean"][j] for g in groups]
    std = [metrics["pose_by_emotion"][g]["std"][j] for g in groups]
    ax.errorbar(np.arange(len(groups)) + 0.2 * (j - 1), mean, yerr=std, fmt="o", capsize=3, label=axis)
  ax.set_xticks(range(len(groups)), groups, rotation=60, fontsize=7)
  ax.set_ylabel("degrees (mean +- std over time)")
  ax.set_title(f"head pose by requested emotion: largest shift from null {metrics['pose_shift_by_emotion']:.2f} deg "
               f"(other noise: {metrics['pose_shift_by_seed']:.2f} deg)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
