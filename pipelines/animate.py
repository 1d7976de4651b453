"""A portrait and a speech recording become a talking video.

  python pipelines/animate.py --checkpoint WORKDIR|CHECKPOINT_DIR --renderer WEIGHTS_DIR|random
                              --image PORTRAIT.jpg --audio SPEECH.wav [--emotion NAME]
                              [--pose generated|fixed|sweep|video:FILE] [--out OUT.mp4] [--paste-back] [--no-crop]
                              [--face N] [--face-models LIVEPORTRAIT_WEIGHTS_DIR]
                              [--w-audio 1.5] [--w-emotion 1.5] [--ddim-steps 25] [--seed 0]
                              [--batch-size N] [--dtype float32|bfloat16] [--no-stitching]

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
  p.add_argument("--checkpoint", required=True,
                 help="a training workdir (newest checkpoint) or one checkpoint; random:CONFIG for that config's model "
                      "with random weights (meaningless motion, for trying the pipeline or timing it)")
  p.add_argument("--renderer", required=True, help="converted LivePortrait weights folder, random or random:tiny")
  p.add_argument("--image", default=None, help="the portrait: a photo of a person (the largest face is animated)")
  p.add_argument("--audio", default=None, help="speech: wav, flac, mp3, or a video's audio track")
  p.add_argument("--jobs", default=None, help="a CSV of jobs (columns image, audio, out; optionally emotion, pose, "
                 "w_audio, w_emotion, ddim_steps, seed, face, paste_back, no_crop) run in this one process, "
                 "instead of --image and --audio; a per-job report is written beside it (JOBS.report.csv)")
  p.add_argument("--face", type=int, default=None, help="which face to animate when the photo has several "
                 "(1 = the largest, the default)")
  p.add_argument("--face-models", default=None, help="LivePortrait's pretrained_weights folder: find faces with its "
                 "own insightface and landmark models (onnxruntime) instead of MediaPipe's")
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
  p.add_argument("--batch-size", type=int, default=None,
                    help="frames per renderer call (default: the largest of 16, 8, 4, 2, 1 whose render program fits the GPU's free memory; 16 on a CPU)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="renderer compute dtype")
  p.add_argument("--no-stitching", action="store_true", help="turn LivePortrait's stitching off")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  if args.jobs is None and (args.image is None or args.audio is None):
    p.error("give --image and --audio (one job), or --jobs JOBS.csv (many)")
  if args.jobs is not None and (args.image is not None or args.audio is not None):
    p.error("--jobs takes the images and audio from its CSV; drop --image and --audio")
  return args


def check_args(args: argparse.Namespace) -> None:
  """The command's own settings, checked before any input is read."""
  if not args.checkpoint.startswith("random:") and not os.path.exists(args.checkpoint):
    raise UserError(f"Checkpoint {args.checkpoint} does not exist; pass a training workdir or one of its "
                    "checkpoints/<step> folders.")
  from playmate_jax.animate import check_batch_size
  check_batch_size(args.batch_size)


def spec_of(args: argparse.Namespace):
  from playmate_jax.animate.job import JobSpec
  return JobSpec(image=args.image, audio=args.audio, out=args.out or os.path.splitext(args.audio)[0] + ".mp4",
                 emotion=args.emotion, pose=args.pose, w_audio=args.w_audio, w_emotion=args.w_emotion,
                 ddim_steps=args.ddim_steps, seed=args.seed, paste_back=args.paste_back, crop=not args.no_crop,
                 face=args.face)


def _start(args: argparse.Namespace, pool: concurrent.futures.ThreadPoolExecutor, watch, background, warm_up):
  """The Animator, with the motion model restored (and its sampler warmed up for `warm_up`: None for no warm-up,
  else whether an emotion is given) on the worker thread while this thread loads the renderer."""
  from playmate_jax import animate as anim
  from playmate_jax.animate.job import Animator
  from playmate_jax.renderer.api import Renderer

  def load_model():
    with background("restore"):
      model = anim.MotionModel.load(args.checkpoint, args.ddim_steps)
    if warm_up is not None:
      with background("sampler warm-up"):
        model.warm_up(emotion=warm_up)
    return model

  model = pool.submit(load_model)
  with watch("renderer"):
    renderer = Renderer.from_spec(args.renderer, args.dtype)
  return Animator(renderer, model, batch_size=args.batch_size, stitching=not args.no_stitching,
                  face_models=args.face_models)


def animate(args: argparse.Namespace) -> dict:
  """Runs one job; returns dict(out, motion, frames, size, seconds, stages, background, render_batch)."""
  from playmate_jax.animate import job as job_lib
  from playmate_jax.timing import Stopwatch

  watch, background = Stopwatch(START), Stopwatch(START)
  # Every input is checked before anything heavy runs, so that a mistake is reported at once: no face (an animal, a
  # landscape) or unreadable audio is one sentence before the model's restore starts.
  check_args(args)
  job = job_lib.prepare(spec_of(args), args.face_models, watch=watch)
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="animate")
  failed = True
  try:
    # The model restores (and its sampler warms up) on the worker while this thread loads the renderer, prepares
    # the portrait and loads the renderer's programs.
    animator = _start(args, pool, watch, background, warm_up=job.label is not None)
    with watch("portrait"):
      portrait = animator.portrait(job)
    with watch("render warm-up"):
      animator.warm_up(portrait)
    with watch("model"):   # what is left of the restore and warm-up when the renderer is ready
      model = animator.model
    model.check_emotion(job.label)
    with watch("motion"):
      motion = animator.motion([job], [portrait], progress=not args.no_progress)[0]
    with watch("render"):
      result = animator.render(job, portrait, motion, progress=not args.no_progress)
    failed = False
  finally:
    # After an error, the restore on the worker finishes before the interpreter exits (cut off at exit, it
    # reported the checkpoint as unreadable).
    pool.shutdown(wait=failed, cancel_futures=True)
  return dict(result, stages=watch, background=background, render_batch=animator.batch_note)


REPORT_FIELDS = ("line", "image", "audio", "out", "state", "frames", "seconds", "error")


def animate_jobs(args: argparse.Namespace) -> list[dict]:
  """Runs every job of the --jobs CSV in this process (the models load once; jobs that share their sampling
  settings generate their motion in one batch); writes JOBS.report.csv; returns the report's rows."""
  from tqdm import tqdm

  from playmate_jax.animate import job as job_lib
  from playmate_jax.timing import Stopwatch

  check_args(args)
  specs = job_lib.read_jobs(args.jobs)
  report = os.path.splitext(args.jobs)[0] + ".report.csv"
  cli.check_output_folder(report)
  rows = [dict(line=n + 2, image=getattr(s, "image", ""), audio=getattr(s, "audio", ""), out=getattr(s, "out", ""),
               state="failed", frames=0, seconds="", error="") for n, s in enumerate(specs)]
  jobs: list[tuple[int, object]] = []
  bar = tqdm(total=len(specs), unit="job", desc="jobs", disable=args.no_progress)
  for n, spec in enumerate(specs):   # every row's inputs read and checked first: bad rows are reported, not fatal
    try:
      if isinstance(spec, UserError):
        raise spec
      jobs.append((n, job_lib.prepare(spec, args.face_models, report=lambda m: None)))
    except UserError as e:
      rows[n]["error"] = str(e)
      bar.update(1)
  watch, background = Stopwatch(START), Stopwatch(START)
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="animate")
  try:
    if jobs:
      animator = _start(args, pool, watch, background, warm_up=None)
      for start in range(0, len(jobs), BATCH):
        group = jobs[start:start + BATCH]
        for i, result in animator.run([j for _, j in group]):
          row = rows[group[i][0]]
          if isinstance(result, Exception):
            row["error"] = str(result)
          else:
            row.update(state="done", frames=result["frames"], seconds=f"{result['seconds']:.2f}")
          bar.update(1)
  finally:
    bar.close()
    pool.shutdown(wait=True, cancel_futures=True)
    _write_report(report, rows)
  return rows


BATCH = 8   # jobs prepared, and their motion generated, together


def _write_report(path: str, rows: list[dict]) -> None:
  import csv
  import io
  text = io.StringIO()
  writer = csv.DictWriter(text, REPORT_FIELDS)
  writer.writeheader()
  writer.writerows(rows)
  cli.write_text(path, text.getvalue())


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  cli.setup_logging("WARNING")

  def run():
    r = animate(args)
    h, w = r["size"]
    print(f"wrote {r['out']}: {r['frames']} frames ({r['frames'] / 25:.2f} s at 25 fps, {w}x{h}) for "
          f"{r['seconds']:.2f} s of audio; motion in {r['motion']}")
    print(f"render batch: {r['render_batch']}{cli.peak_device_memory()}")
    print(f"time: {r['stages'].summary()}; on a worker thread meanwhile: {r['background'].summary()}")
    print(f"timeline (seconds since the command began): {r['stages'].timeline()}; worker: "
          f"{r['background'].timeline()}; done at {time.perf_counter() - START:.1f}")

  def run_jobs():
    rows = animate_jobs(args)
    for row in rows:
      said = f"{row['out']}: {row['frames']} frames" if row["state"] == "done" else f"failed: {row['error']}"
      print(f"line {row['line']}: {said}")
    done = sum(r["state"] == "done" for r in rows)
    print(f"{done} of {len(rows)} jobs done; report in {os.path.splitext(args.jobs)[0]}.report.csv")
    if done < len(rows):
      return 1

  return cli.run(run_jobs if args.jobs else run,
                 oom_fix="rerun with a smaller --batch-size (frames per renderer call: 8, 4, 2 or 1)")


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
