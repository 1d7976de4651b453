"""A portrait and a speech recording become a talking video.

  python pipelines/animate.py --checkpoint WORKDIR|CHECKPOINT_DIR --renderer WEIGHTS_DIR|random
                              --image PORTRAIT.jpg --audio SPEECH.wav [--emotion NAME]
                              [--pose generated|fixed|sweep|video:FILE] [--out OUT.mp4] [--paste-back] [--no-crop]
                              [--face N] [--face-models LIVEPORTRAIT_WEIGHTS_DIR]
                              [--w-audio 1.5] [--w-emotion 1.5] [--ddim-steps 25] [--seed 0]
                              [--batch-size 16] [--dtype float32|bfloat16] [--no-stitching]

- The portrait's face is found (the largest, or --face N; a photo with no human face stops here, before anything
  heavy) and cropped as LivePortrait crops it, from its landmarks (--no-crop: the image already is a crop); its
  appearance and motion are extracted once.
- The motion model (a stage-1 or stage-2 training workdir, EMA weights) generates expression and head pose for
  the whole recording, window by window (any length); with a stage-2 model, --emotion NAME (angry, contempt,
  disgusted, fear, happy, neutral, sad, surprised) steers the expression by three-way guidance.
- --pose: `generated` from the audio (default), `fixed` (the portrait's own pose, held still), `sweep` (a preset
  slow turn of the head), or `video:FILE` (the head pose of a driving video, relative to its first frame; the
  expression still comes from the audio).
- Frames are stitched and rendered in batches (512x512 with the released weights), streamed to an H.264 mp4 at
  25 fps with the speech muxed in, or pasted back into the full photo with --paste-back. The generated motion
  is saved beside the video (OUT.motion.npz, the dataset's motion keys).

RENDERER: LivePortrait's weights converted by `pipelines/convert.py liveportrait`, or `random` (meaningless
images, for trying the pipeline), or `random:tiny` (small random networks, for smoke tests).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time

START = time.perf_counter()   # the stages' timeline counts from here, before the heavy imports

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from playmate_jax import cli  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="a training workdir (newest checkpoint) or one checkpoint")
  p.add_argument("--renderer", required=True, help="converted LivePortrait weights folder, random or random:tiny")
  p.add_argument("--image", required=True, help="the portrait: a photo of a person (the largest face is animated)")
  p.add_argument("--face", type=int, default=None, help="which face to animate when the photo has several "
                 "(1 = the largest, the default)")
  p.add_argument("--face-models", default=None, help="LivePortrait's pretrained_weights folder: find faces with its "
                 "own insightface and landmark models (onnxruntime) instead of MediaPipe's")
  p.add_argument("--audio", required=True, help="speech: wav, flac, mp3, or a video's audio track")
  p.add_argument("--emotion", default=None, help="stage 2: the emotion to show")
  p.add_argument("--pose", default="generated", help="generated, fixed, sweep or video:FILE")
  p.add_argument("--out", default=None, help="output mp4 (default: beside the audio, AUDIO.mp4)")
  p.add_argument("--paste-back", action="store_true", help="paste the animated face back into the full photo")
  p.add_argument("--no-crop", action="store_true",
                 help="the image is already a face crop (LivePortrait's framing): use its centred square as it is, "
                      "with no face detection")
  p.add_argument("--w-audio", type=float, default=None, help="audio guidance weight (default: the config's)")
  p.add_argument("--w-emotion", type=float, default=None, help="emotion guidance weight (default: the config's)")
  p.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps (default: the config's)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=int, default=16, help="frames per renderer call")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="renderer compute dtype")
  p.add_argument("--no-stitching", action="store_true", help="turn LivePortrait's stitching off")
  p.add_argument("--no-progress", action="store_true")
  return p.parse_args(argv)


def animate(args: argparse.Namespace) -> dict:
  """Runs the whole job; returns dict(out, motion, frames, size, seconds)."""
  import numpy as np

  from playmate_jax import animate as anim
  from playmate_jax.audio import load_audio, num_frames
  from playmate_jax.renderer.api import Renderer
  from playmate_jax.timing import Stopwatch

  watch = Stopwatch(START)

  # Every input is checked before anything heavy runs, so that a mistake is reported at once.
  out = args.out or os.path.splitext(args.audio)[0] + ".mp4"
  cli.check_output_folder(out)
  if args.batch_size < 1:
    raise UserError(f"--batch-size {args.batch_size} must be at least 1.")
  label = None if args.emotion is None else anim.emotion_label(args.emotion)
  pose, driving_path = args.pose, None
  if pose.startswith("video:"):
    pose, driving_path = "video", pose[len("video:"):]
    if not os.path.isfile(driving_path):
      raise UserError(f"Driving video {driving_path} (from --pose) does not exist; check the path.")
  elif pose not in ("generated", "fixed", "sweep"):
    raise UserError(f"--pose {args.pose!r} is not a pose mode; use one of: {', '.join(anim.POSE_MODES)}.")
  if not os.path.exists(args.checkpoint):
    raise UserError(f"Checkpoint {args.checkpoint} does not exist; pass a training workdir or one of its "
                    "checkpoints/<step> folders.")
  with watch("face"):  # no face (an animal, a landscape): one sentence before the model and renderer load
    image, face = anim.find_portrait(args.image, crop=not args.no_crop, face=args.face, face_models=args.face_models)

  # The motion model is restored, and its sampler traced and loaded, on a worker thread while this one loads the
  # renderer, prepares the portrait and traces and loads the renderer's programs.
  background = Stopwatch(START)

  def load_model():
    with background("restore"):
      model = anim.MotionModel.load(args.checkpoint, args.ddim_steps)
    if label is None or model.stage == 2:
      with background("sampler warm-up"):
        model.warm_up(emotion=label is not None)
    return model

  with watch("audio"):  # an unreadable audio file: one sentence before the model's restore starts
    wave = load_audio(args.audio)
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="animate")
  failed = True
  try:
    model_job = pool.submit(load_model)
    with watch("renderer"):
      renderer = Renderer.from_spec(args.renderer, args.dtype)
    with watch("portrait"):
      portrait = anim.load_portrait(renderer, image, face)
    with watch("render warm-up"):
      anim.warm_up_render(renderer, portrait, args.batch_size, not args.no_stitching)
    with watch("model"):   # what is left of the restore and warm-up when the renderer is ready
      model = model_job.result()
    model.check_emotion(label)
    with watch("motion"):
      motion = model.generate(wave, portrait.motion, seed=args.seed, w_audio=args.w_audio, emotion=label,
                              w_emotion=args.w_emotion, progress=not args.no_progress)
    assert len(motion["exp"]) == num_frames(len(wave))
    motion_path = os.path.splitext(out)[0] + ".motion.npz"
    cli.save_npz(motion_path, fps=np.int32(anim.FPS), **motion)
    n = len(motion["exp"])
    with watch("pose"):
      if pose == "video":
        frames = anim.compose(portrait.motion, motion, "driven", anim.video_pose(renderer, driving_path, n,
                                                                               face_models=args.face_models))
      elif pose == "sweep":
        frames = anim.compose(portrait.motion, motion, "driven", anim.sweep_pose(n))
      else:
        frames = anim.compose(portrait.motion, motion, pose)
    with watch("render"):
      result = anim.render_video(renderer, portrait, frames, out, audio=wave, batch_size=args.batch_size,
                                 stitching=not args.no_stitching, paste_back=args.paste_back,
                                 progress=not args.no_progress)
    failed = False
  finally:
    # After an error, the restore on the worker finishes before the interpreter exits (cut off at exit, it
    # reported the checkpoint as unreadable).
    pool.shutdown(wait=failed, cancel_futures=True)
  return dict(result, out=out, motion=motion_path, seconds=len(wave) / 16000, stages=watch, background=background)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  cli.setup_logging("WARNING")

  def run():
    r = animate(args)
    h, w = r["size"]
    print(f"wrote {r['out']}: {r['frames']} frames ({r['frames'] / 25:.2f} s at 25 fps, {w}x{h}) for "
          f"{r['seconds']:.2f} s of audio; motion in {r['motion']}")
    print(f"time: {r['stages'].summary()}; on a worker thread meanwhile: {r['background'].summary()}")
    print(f"timeline (seconds since the command began): {r['stages'].timeline()}; worker: "
          f"{r['background'].timeline()}; done at {time.perf_counter() - START:.1f}")

  return cli.run(run)


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
