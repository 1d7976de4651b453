"""Evaluate a trained stage-1 or stage-2 model (EMA weights) in motion space on a held-out split of its dataset.

  python pipelines/evaluate.py --checkpoint WORKDIR|WORKDIR/checkpoints/STEP [--split test] [--num-clips N]
                               [--max-frames F] [--batch-size B] [--seed S] [--out DIR] [--config.KEY=VALUE ...]

Each held-out clip (the first N of the split, cut to its first F frames) is generated from its audio and its source
(frame 0, its expression as config.data.source_expression says) and compared with the truth: mouth-opening
correlation, keypoint distance, head-pose spread and distance, jitter, and the mouth correlation with the audio
dropped. A stage-2 model is also sampled with each clip's emotion, with every emotion, and with the emotion dropped,
at w_e = config.sample.w_emotion; a softmax-regression emotion classifier trained on the labelled training clips
(ground truth) tells which emotion each sample shows, and the head pose is summarised per requested emotion.

The clips are sampled and scored by the function training's evaluation uses (playmate_jax/train/evaluate.py,
evaluate_model): with the defaults (config.eval's clips and frames, the run's config.seed, 16 clips at a time) the
motion metrics are those of the workdir's eval_metrics.jsonl at the checkpoint's step.

Writes DIR/metrics.json (default DIR: WORKDIR/evaluation/<split>), DIR/curves.png (mouth and head rotation over
time) and, for stage 2, DIR/emotion.png (confusion matrices, pose per emotion). --config.KEY=VALUE overrides the
checkpoint's config (e.g. --config.sample.ddim_steps=10 or --config.sample.w_emotion=2.0).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from playmate_jax import cli  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402


def train_classifier(config, stats):
  """The emotion classifier of config.eval.classifier on the labelled train clips."""
  import numpy as np
  from playmate_jax.data import loader
  from playmate_jax.train import emotion_classifier as classifier_lib
  settings = config.eval.classifier
  clips = loader.load_labelled_expressions(config, config.data.train_split, settings.max_clips)
  if len({c["emotion"] for c in clips}) < 2:
    raise UserError(f"Split {config.data.train_split!r} has {len(clips)} clips with an emotion label, of fewer than "
                    "two emotions, so no emotion classifier can be trained; label the clips (preprocess.py "
                    "--emotions) or evaluate a stage-1 checkpoint.")
  features = np.stack([classifier_lib.clip_feature(c["exp"], stats.reference_expression(c["speaker_id"]))
                       for c in clips])
  return classifier_lib.train_classifier(features, [c["emotion"] for c in clips], steps=settings.steps, lr=settings.lr,
                                         l2=settings.l2)


def evaluate_checkpoint(checkpoint: str, *, split: str | None = None, num_clips: int | None = None,
                        max_frames: int | None = None, batch_size: int | None = None, seed: int | None = None,
                        out: str | None = None, overrides: dict[str, str] | None = None,
                        progress: bool = True) -> dict:
  """Evaluates the checkpoint, writes metrics.json and the plots into `out`; returns the metrics.

  The clips are sampled by eval_lib.evaluate_model, as training's evaluation samples them: with the defaults
  (config.eval's clips and frames, config.seed, eval_lib.BATCH_SIZE clips at a time) the motion metrics are those
  that training logged at the checkpoint's step. A mistake in the arguments stops with one sentence before any
  output is written."""
  from playmate_jax import run as run_lib
  from playmate_jax.data import loader
  from playmate_jax.train import evaluate as eval_lib
  from playmate_jax.generator.factory import window_sampler

  batch_size = eval_lib.BATCH_SIZE if batch_size is None else batch_size
  _check_arguments(num_clips, max_frames, batch_size, out)
  run = run_lib.restore_run(checkpoint)
  config = _config(run, overrides or {})
  split, clips = _clips(config, run, split, num_clips, max_frames)
  stage2 = int(config.stage) == 2
  classifier = references = None
  if stage2:
    stats = loader.dataset_stats(config)
    classifier = train_classifier(config, stats)
    references = {c["speaker_id"]: stats.reference_expression(c["speaker_id"]) for c in clips}
  sampler = window_sampler(config, clips[0]["audio"].shape[-1])
  metrics, curves = eval_lib.evaluate_model(sampler, run.params, config, clips, seed=seed, batch_size=batch_size,
                                            classifier=classifier, references=references, progress=progress)
  metrics["num_clips"] = len(clips)
  metrics["run"] = {"checkpoint": os.path.abspath(checkpoint), "workdir": run.workdir, "step": run.step,
                    "stage": int(config.stage), "split": split, "max_frames": max(c["num_frames"] for c in clips),
                    "w_audio": float(config.sample.w_audio), "seed": int(config.seed if seed is None else seed),
                    "w_emotion": float(config.sample.w_emotion) if stage2 else None}
  out = out or os.path.join(run.workdir, "evaluation", split)
  os.makedirs(out, exist_ok=True)
  eval_lib.plot(curves, os.path.join(out, "curves.png"), run.step)
  if stage2:
    eval_lib.plot_emotion(metrics, os.path.join(out, "emotion.png"))
  eval_lib.save_json(metrics, os.path.join(out, "metrics.json"))   # last: it is there once everything is
  return metrics


def _check_arguments(num_clips: int | None, max_frames: int | None, batch_size: int, out: str | None) -> None:
  """The counts and the output folder, checked before any work."""
  for flag, value in (("--num-clips", num_clips), ("--max-frames", max_frames), ("--batch-size", batch_size)):
    if value is not None and value < 1:
      raise UserError(f"{flag} {value} must be at least 1.")
  if out is not None:
    if os.path.exists(out) and not os.path.isdir(out):
      raise UserError(f"--out {out} is a file; pass a folder (it will hold metrics.json and the plots).")
    # The folder itself may be new (it is made at the end), the one that holds it must exist and be writable.
    cli.check_output_folder(os.path.join(out, "metrics.json") if os.path.isdir(out) else out)


# Config keys of the emotion controller and its evaluation, which a stage-1 model does not have.
EMOTION_SETTINGS = ("emotion.", "sample.w_emotion", "eval.classifier")


def _config(run, overrides: dict[str, str]):
  """The checkpoint's config with the overrides, validated; the stage and the emotion settings stay the model's."""
  from playmate_jax import configlib
  stage = int(run.config.stage)
  if "stage" in overrides and overrides["stage"].strip() != str(stage):
    raise UserError(f"--config.stage={overrides['stage']} does not apply: {run.workdir} holds a stage-{stage} "
                    f"model, whose weights fix the stage; drop the flag, or pass the workdir of a "
                    f"stage-{overrides['stage'].strip()} run.")
  emotion = [k for k in overrides if k.startswith(EMOTION_SETTINGS)]
  if stage == 1 and emotion:
    raise UserError(f"--config.{emotion[0]} does not apply: {run.workdir} holds a stage-1 model, which has no "
                    "emotion controller; for emotion metrics evaluate a stage-2 run (configs/stage2.py).")
  config = configlib.apply_overrides(run.config.copy_and_resolve_references(), overrides)
  config.lock()
  configlib.validate(config)   # the overridden values too; a restored run's config: no device count
  return config


def _clips(config, run, split: str | None, num_clips: int | None, max_frames: int | None) -> tuple[str, list[dict]]:
  """(split, its first num_clips clips cut to max_frames); a split the dataset lacks or fewer clips than asked
  for stop with one sentence naming the flag."""
  from playmate_jax.data import loader
  if split is not None:
    dataset = loader.open_dataset(config)
    if split not in dataset.clips:
      raise UserError(f"Dataset {dataset.path} has no split {split!r}; pass --split with one of "
                      f"{', '.join(sorted(dataset.clips))} (or leave it out: config.data.eval_split).")
  split = split or config.data.eval_split
  clips = loader.load_eval_clips(config, split, num_clips, max_frames)
  if not clips:
    raise UserError(f"Split {split!r} of the dataset of {run.workdir} holds no clips; pass another --split.")
  if num_clips is not None and len(clips) < num_clips:
    raise UserError(f"--num-clips {num_clips} is more than the {len(clips)} clips of split {split!r} of the "
                    f"dataset of {run.workdir}; pass --num-clips {len(clips)} or fewer.")
  return split, clips


def summary(metrics: dict) -> str:
  """The headline numbers, one line."""
  keys = ["mouth_corr", "mouth_corr_no_audio", "kp_dist", "pose_std", "pose_std_true", "pose_dist", "jitter",
          "jitter_true", "emotion_acc", "emotion_acc_null", "emotion_acc_sweep", "classifier_acc_true",
          "pose_shift_by_emotion", "pose_shift_by_seed", "pose_std_change_by_emotion"]
  return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="a training workdir (newest checkpoint) or one checkpoint")
  parser.add_argument("--split", default=None, help="held-out split (default: config.data.eval_split)")
  parser.add_argument("--num-clips", "--num_clips", type=int, default=None,
                      help="clips evaluated, the split's first (default: config.eval.num_clips)")
  parser.add_argument("--max-frames", "--max_frames", type=int, default=None,
                      help="frames per clip, from its start (default: config.eval.max_frames)")
  parser.add_argument("--batch-size", "--batch_size", type=int, default=None,
                      help="clips sampled at once (default: 16, as training's evaluation; it decides their noise)")
  parser.add_argument("--seed", type=int, default=None,
                      help="seed of the noise (default: the run's config.seed, as training's evaluation)")
  parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/evaluation/SPLIT)")
  args, rest = parser.parse_known_args(argv)
  cli.setup_logging()

  def evaluate():
    from playmate_jax import configlib
    metrics = evaluate_checkpoint(args.checkpoint, split=args.split, num_clips=args.num_clips,
                                  max_frames=args.max_frames, batch_size=args.batch_size, seed=args.seed, out=args.out,
                                  overrides=configlib.parse_overrides(rest))
    where = args.out or os.path.join(metrics["run"]["workdir"], "evaluation", metrics["run"]["split"])
    print(f"evaluated {metrics['num_clips']} clips of split {metrics['run']['split']!r}: {summary(metrics)}")
    print(f"wrote {os.path.join(where, 'metrics.json')}")

  return cli.run(evaluate)


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
