"""Generate motion for a speech recording with a trained stage-1 or stage-2 model (EMA weights).

  python pipelines/sample.py --checkpoint WORKDIR|WORKDIR/checkpoints/STEP --audio SPEECH.wav [--out MOTION.npz]
                             [--source SOURCE.npz] [--w_audio 1.5] [--ddim_steps 25] [--seed 0]
                             [--emotion NAME [--w-emotion 1.5]]   (stage 2)

Any length of audio: windows of config.data.window frames, each conditioned on the last K frames generated
before it, so memory stays flat. The output .npz holds the dataset's motion keys at 25 fps: exp [T,21,3],
pitch, yaw, roll [T] (degrees), t [T,3], scale [T], kp [T,21,3].

The source identity (the portrait whose motion is generated) comes from --source, an .npz with the same keys
for one frame (or several: the first is used), e.g. the motion extractor's output for a portrait; without it,
the training data's average identity is used. Generated pose is relative to the source: its per-identity
normalization is centred on the source's own pose with the training data's typical pose spread.

With a stage-2 checkpoint (configs/stage2.py), --emotion NAME (one of MEAD's eight, listed by --help) steers the
expression by three-way guidance, eps(0,0) + w_a [eps(a,0) - eps(0,0)] + w_e [eps(a,e) - eps(a,0)]; without it the
null emotion is used. A stage-1 checkpoint samples with audio guidance alone, as before.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from playmate_jax import cli  # noqa: E402
from playmate_jax.data import MOTION_KEYS  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402
from playmate_jax.motion import EMOTIONS  # noqa: E402


def emotion_label(name: str) -> int:
  """The emotion's label: its index in EMOTIONS (MEAD's order)."""
  if name.lower() not in EMOTIONS:
    raise UserError(f"--emotion {name!r} is not an emotion this project knows; use one of: {', '.join(EMOTIONS)}.")
  return EMOTIONS.index(name.lower())


def load_source(path: str | None, stats) -> dict[str, np.ndarray]:
  """One frame of motion: from an .npz, or the training data's average identity."""
  if path is None:
    pose = stats.default_pose_mean
    return {"exp": stats.exp_mean.reshape(21, 3), "pitch": pose[0], "yaw": pose[1], "roll": pose[2],
            "t": np.array([pose[3], pose[4], 0.0], np.float32), "scale": pose[5],
            "kp": stats.kp_mean.reshape(21, 3)}
  try:
    with np.load(path) as f:
      missing = [k for k in MOTION_KEYS if k not in f]
      if missing:
        raise UserError(f"Source motion {path} lacks {', '.join(missing)}; it needs the keys {', '.join(MOTION_KEYS)}.")
      source = {k: np.asarray(f[k], np.float32) for k in MOTION_KEYS}
  except (OSError, ValueError) as e:
    raise UserError(f"Source motion {path} is not a readable .npz file ({e}); pass one written by this project.") from None
  per_frame = {"exp": (21, 3), "kp": (21, 3), "t": (3,)}  # angles and scale: one number per frame
  return {k: v.reshape((-1,) + per_frame.get(k, ()))[0] for k, v in source.items()}


def generate(checkpoint: str, audio_path: str, *, source_path: str | None = None, seed: int = 0,
             w_audio: float | None = None, ddim_steps: int | None = None, emotion: str | None = None,
             w_emotion: float | None = None, progress: bool = True) -> dict[str, np.ndarray]:
  """Motion (dataset keys, [T, ...]) for the audio file, from the checkpoint's EMA weights; emotion (a name in
  EMOTIONS) and w_emotion need a stage-2 checkpoint."""
  import jax
  from playmate_jax import audio, data, generator, motion
  from playmate_jax.train import checkpoint as ckpt_lib
  from playmate_jax.train import state as state_lib
  from playmate_jax.train.trainer import model_factory

  label = None if emotion is None else emotion_label(emotion)
  if w_emotion is not None and label is None:
    raise UserError("--w-emotion has no effect without --emotion NAME; add one or drop --w-emotion.")
  run = ckpt_lib.restore_run(checkpoint)
  config, stats = run.config, run.stats
  if label is not None and config.stage != 2:
    raise UserError(f"Checkpoint {run.workdir} is a stage-{config.stage} model, which has no emotion control; "
                    "drop --emotion or pass a stage-2 checkpoint (trained with configs/stage2.py).")
  if ddim_steps is not None:
    with config.unlocked():
      config.sample.ddim_steps = ddim_steps
  wave = audio.load_audio(audio_path, config.audio.sample_rate)
  features = stats.normalize_audio(audio.get_encoder(config.audio).encode(wave))

  source = load_source(source_path, stats)
  source_vec = data.motion_vector({k: v[None] for k, v in source.items()})[0]
  mstats = stats.source_motion_stats(source_vec[motion.EXP_DIM:])
  identity = data.identity_vector(np.asarray(motion.normalize_motion(source_vec, mstats)), source["kp"])

  graphdef = state_lib.model_graphdef(model_factory(config, features.shape[-1]))
  sampler = generator.make_window_sampler(graphdef, generator.Diffusion.from_config(config.diffusion), config)
  out = generator.sample_sequence(sampler, run.params, features, identity, jax.random.key(seed), config,
                                  w_audio=w_audio, emotion=label, w_emotion=w_emotion, progress=progress)
  fields = {k: np.asarray(v) for k, v in motion.unpack_motion(motion.denormalize_motion(out, mstats)).items()}
  fields["kp"] = np.broadcast_to(source["kp"], (len(out), 21, 3)).astype(np.float32)
  return fields


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="a training workdir (newest checkpoint) or one checkpoint")
  parser.add_argument("--audio", required=True, help="speech: wav, flac, ogg, ... any rate and channel count")
  parser.add_argument("--out", default=None, help="output .npz (default: beside the audio, AUDIO.motion.npz)")
  parser.add_argument("--source", default=None, help=".npz with the source frame's motion keys")
  parser.add_argument("--w_audio", "--w-audio", type=float, default=None,
                      help="audio guidance weight (default: config)")
  parser.add_argument("--ddim_steps", "--ddim-steps", type=int, default=None, help="DDIM steps (default: config)")
  parser.add_argument("--emotion", default=None, help=f"stage 2: one of {', '.join(EMOTIONS)}")
  parser.add_argument("--w_emotion", "--w-emotion", type=float, default=None,
                      help="stage 2: emotion guidance weight (default: config)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  out = args.out or os.path.splitext(args.audio)[0] + ".motion.npz"
  cli.setup_logging()

  def sample():
    fields = generate(args.checkpoint, args.audio, source_path=args.source, seed=args.seed, w_audio=args.w_audio,
                      ddim_steps=args.ddim_steps, emotion=args.emotion, w_emotion=args.w_emotion)
    np.savez(out, fps=np.int32(25), **fields)
    print(f"wrote {len(fields['exp'])} frames ({len(fields['exp']) / 25:.1f} s) of motion to {out}")

  return cli.run(sample)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
