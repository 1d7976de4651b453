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
from playmate_jax.motion import MOTION_KEYS  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402
from playmate_jax.motion import EMOTIONS  # noqa: E402


def load_source(path: str) -> dict[str, np.ndarray]:
  """One frame of motion from an .npz with the dataset's motion keys (the first frame if it holds several)."""
  from playmate_jax.animate import one_frame
  try:
    with np.load(path) as f:
      missing = [k for k in MOTION_KEYS if k not in f]
      if missing:
        raise UserError(f"Source motion {path} lacks {', '.join(missing)}; it needs the keys {', '.join(MOTION_KEYS)}.")
      return one_frame({k: f[k] for k in MOTION_KEYS})
  except (OSError, ValueError) as e:
    raise UserError(f"Source motion {path} is not a readable .npz file ({e}); pass one written by this project.") from None


def generate(checkpoint: str, audio_path: str, *, source_path: str | None = None, seed: int = 0,
             w_audio: float | None = None, ddim_steps: int | None = None, emotion: str | None = None,
             w_emotion: float | None = None, progress: bool = True) -> dict[str, np.ndarray]:
  """Motion (dataset keys, [T, ...]) for the audio file, from the checkpoint's EMA weights; emotion (a name in
  EMOTIONS) and w_emotion need a stage-2 checkpoint."""
  from playmate_jax import audio
  from playmate_jax.animate import MotionModel, emotion_label
  label = None if emotion is None else emotion_label(emotion)
  if w_emotion is not None and label is None:
    raise UserError("--w-emotion has no effect without --emotion NAME; add one or drop --w-emotion.")
  model = MotionModel.load(checkpoint, ddim_steps)
  source = load_source(source_path) if source_path else model.default_source()
  wave = audio.load_audio(audio_path, model.config.audio.sample_rate)
  return model.generate(wave, source, seed=seed, w_audio=w_audio, emotion=label, w_emotion=w_emotion,
                        progress=progress)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="a training workdir (newest checkpoint) or one checkpoint")
  parser.add_argument("--audio", required=True, help="speech: wav, flac, ogg, ... any rate and channel count")
  parser.add_argument("--out", default=None, help="output .npz (default: beside the audio, AUDIO.motion.npz, or "
                      "AUDIO-2.motion.npz, ... when that exists)")
  parser.add_argument("--source", default=None, help=".npz with the source frame's motion keys")
  parser.add_argument("--w_audio", "--w-audio", type=float, default=None,
                      help="audio guidance weight (default: config)")
  parser.add_argument("--ddim_steps", "--ddim-steps", type=int, default=None, help="DDIM steps (default: config)")
  parser.add_argument("--emotion", default=None, help=f"stage 2: one of {', '.join(EMOTIONS)}")
  parser.add_argument("--w_emotion", "--w-emotion", type=float, default=None,
                      help="stage 2: emotion guidance weight (default: config)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  out = args.out or cli.free_name(os.path.splitext(args.audio)[0] + ".motion.npz")  # never over an earlier one
  cli.setup_logging()

  def sample():
    cli.check_output_folder(out)
    fields = generate(args.checkpoint, args.audio, source_path=args.source, seed=args.seed, w_audio=args.w_audio,
                      ddim_steps=args.ddim_steps, emotion=args.emotion, w_emotion=args.w_emotion)
    cli.save_npz(out, fps=np.int32(25), **fields)
    print(f"wrote {len(fields['exp'])} frames ({len(fields['exp']) / 25:.1f} s) of motion to {out}")

  return cli.run(sample)


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
