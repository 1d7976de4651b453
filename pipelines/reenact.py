"""Drive a portrait with a driving video (LivePortrait's reenactment), writing an mp4 with the video's audio.

  python pipelines/reenact.py --renderer WEIGHTS_DIR|random --source PORTRAIT.jpg --driving VIDEO.mp4
                              --out OUT.mp4 [--no-stitching] [--eye-retargeting] [--lip-retargeting]
                              [--paste-back] [--crop-driving] [--batch-size N] [--dtype float32|bfloat16]
                              [--max-frames N]

WEIGHTS_DIR is LivePortrait's released weights converted by `python pipelines/convert.py liveportrait`;
`random` uses randomly initialized networks of the released sizes (meaningless output, for trying the
pipeline), `random:tiny` tiny random networks on 64x64 crops (smoke tests).

What it does, as LivePortrait's relative mode for a driving video:
- the portrait is cropped around its face (LivePortrait's crop, 256x256); its appearance feature volume and
  its motion are extracted once;
- the driving video streams in batches (memory stays flat for any length). Its frames are used whole when
  they are square, else (or with --crop-driving) cropped with one square found on the first frame with a face.
  Each frame's motion is composed onto the portrait relative to the first driving frame: rotation
  R_d,i R_d,0^T R_s, expression exp_s + (exp_d,i - exp_d,0), scale s_s * s_d,i / s_d,0 and translation
  t_s + (t_d,i - t_d,0) with tz = 0 (`playmate_jax.motion.relative_motion`);
- stitching (on by default) adjusts the driving keypoints so that the animated crop pastes back seamlessly;
- frames are rendered (W + G) at 512x512, or pasted back into the full portrait with --paste-back, and
  written at the driving video's frame rate with its audio (a video without audio gives a silent output).

Eye and lip retargeting (--eye-retargeting, --lip-retargeting) follow LivePortrait: with either on, the
driving pose and expression are not transferred; the portrait's keypoints get only the retargeting MLPs'
eye and/or lip deltas (then stitching). The MLPs take open-ness ratios measured on facial landmarks, as
LivePortrait's: the portrait's own eye and lip ratios beside each driving frame's (`face.finder.open_ratios`; a
frame where no face is found keeps the previous frame's ratio).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from playmate_jax import cli  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402

def load_renderer(spec: str, dtype_name: str):
  from playmate_jax.renderer.api import Renderer
  return Renderer.from_spec(spec, dtype_name)


class _Retargeting:
  """LivePortrait's eye/lip retargeting: the portrait's keypoints plus the MLPs' deltas, which take the portrait's
  open-ness ratios (eye: both eyes; lip) beside the driving frame's (eye: the first eye; lip)."""

  def __init__(self, renderer, x_s, source_landmarks, eyes: bool, lips: bool):
    from playmate_jax.face.finder import open_ratios
    self.renderer, self.x_s, self.eyes, self.lips = renderer, x_s, eyes, lips
    self.eye_s, self.lip_s = open_ratios(source_landmarks)

  def source_ratios(self) -> tuple[float, float]:
    return float(self.eye_s[0]), float(self.lip_s)

  def __call__(self, eye_d, lip_d):
    """x_s plus the eye and lip deltas for driving ratios eye_d, lip_d [B]."""
    import jax.numpy as jnp
    eye_d, lip_d = jnp.asarray(eye_d, jnp.float32), jnp.asarray(lip_d, jnp.float32)
    kp = jnp.broadcast_to(self.x_s, (eye_d.shape[0],) + self.x_s.shape[1:])
    out = kp
    if self.eyes:
      ratios = jnp.stack([jnp.full_like(eye_d, self.eye_s[0]), jnp.full_like(eye_d, self.eye_s[1]), eye_d], -1)
      out = out + self.renderer.retarget_eyes(kp, ratios)
    if self.lips:
      out = out + self.renderer.retarget_lips(kp, jnp.stack([jnp.full_like(lip_d, self.lip_s), lip_d], -1))
    return out


def driving_ratios(frames, previous: tuple[float, float], face_models: str | None = None):
  """(eye [B], lip [B]) ratios of each frame's largest face; a frame with no face keeps the previous ratios."""
  from playmate_jax.face.finder import finder, open_ratios
  eyes, lips = [], []
  for faces in finder(face_models).find_batch(list(frames)):
    if faces:
      e, lip = open_ratios(faces[0].landmarks)
      previous = (float(e[0]), float(lip))
    eyes.append(previous[0])
    lips.append(previous[1])
  return np.array(eyes, np.float32), np.array(lips, np.float32), previous


def find_portrait(source: str, face: int | None = None, face_models: str | None = None):
  """The portrait's pixels and its face (one sentence naming the file when it has none): see animate.py."""
  from playmate_jax.animate import find_portrait as find
  return find(source, face=face, face_models=face_models)


def load_source_crop(image, face, size: int):
  from playmate_jax.face import crop as crop_lib
  return crop_lib.crop_face(image, face.crop_landmarks, crop_lib.SOURCE, size)


def reenact(renderer, source: str, driving: str, out: str, *, stitching: bool = True, eye_retargeting: bool = False,
            lip_retargeting: bool = False, paste_back: bool = False, crop_driving: bool = False,
            batch_size: int | None = None, max_frames: int | None = None, progress: bool = True,
            source_crop=None, source_face=None, driving_info=None, face: int | None = None,
            face_models: str | None = None) -> dict:
  """Render `out`; returns dict(frames, size (h, w), fps, has_audio, render_batch). batch_size None: chosen from the
  device's free memory (animate.auto_render_batch)."""
  import itertools

  import jax
  import jax.numpy as jnp
  from tqdm import tqdm

  from playmate_jax import motion, video
  from playmate_jax.animate import check_batch_size, chunks, pad_rows, render_batch, render_stream
  from playmate_jax.face import crop as crop_lib
  from playmate_jax.face import finder as face_finder

  check_batch_size(batch_size)
  info = driving_info or video.probe(driving)
  if source_crop is None or (source_face is None and (eye_retargeting or lip_retargeting)):
    image, source_face = find_portrait(source, face=face, face_models=face_models)
    source_crop = source_crop or load_source_crop(image, source_face, renderer.crop_size)
  src_crop = source_crop
  batch_size, note = render_batch(renderer, batch_size)

  # The driving crop: whole square frames, else LivePortrait's driving crop from the first frame with a face.
  dsize = crop_lib.DRIVING.dsize
  matrix = crop_lib.center_crop_matrix(info.height, info.width, dsize)
  if crop_driving or info.width != info.height:
    matrix = face_finder.video_crop_matrix(driving, face_models)

  # The portrait, once.
  crop_s = jnp.asarray(src_crop.image[None])
  f_s = renderer.extract_appearance(crop_s)
  src = renderer.extract_motion(crop_s)
  x_s = renderer.keypoints(src)
  retarget = (_Retargeting(renderer, x_s, source_face.landmarks, eye_retargeting, lip_retargeting)
              if eye_retargeting or lip_retargeting else None)

  @jax.jit
  def relative_keypoints(drv, first):
    rel = motion.relative_motion(src, drv, first)
    return motion.transform_keypoints_with_matrix(src["kp"], rel["rotation"], rel["exp"], rel["t"], rel["scale"])

  def driving_keypoints(crops: np.ndarray, first):
    drv = renderer.extract_motion(jnp.asarray(crops))
    if first is None:
      first = jax.tree.map(lambda v: v[:1], drv)
    return relative_keypoints(drv, first), first

  original = crop_lib.load_image(source) if paste_back else None
  paster = crop_lib.PasteBack(original, src_crop, renderer.render_size) if paste_back else None
  fps = info.fps or 25.0
  if not info.has_audio:
    print(f"{driving} has no audio track; the output will have no audio.")
  total = info.num_frames if max_frames is None else min(info.num_frames or max_frames, max_frames)
  frames = video.read_frames(driving)
  if max_frames is not None:
    frames = itertools.islice(frames, max_frames)

  def keypoint_batches():
    first, ratios = None, retarget.source_ratios() if retarget is not None else None
    for batch in chunks(frames, batch_size):
      if retarget is not None:  # LivePortrait's retargeting: the driving frames' landmark ratios, no motion
        eye_d, lip_d, ratios = driving_ratios(batch, ratios, face_models)
        yield retarget(pad_rows(eye_d, batch_size), pad_rows(lip_d, batch_size)), len(batch)
        continue
      crops = np.stack([face_finder.crop_frame(f, matrix, renderer.crop_size) for f in batch]) / np.float32(255)
      x_d, first = driving_keypoints(pad_rows(crops, batch_size), first)   # one compiled shape for the video
      yield x_d, len(batch)

  with video.VideoWriter(out, fps=fps, audio=driving if info.has_audio else None) as writer, \
       tqdm(total=total or None, unit="frame", desc="reenact", disable=not progress) as bar:

    def write(images):
      for image in images:
        writer.write(paster(image) if paster is not None else image)
      bar.update(len(images))

    render_stream(renderer, f_s, x_s, keypoint_batches(), write, stitching=stitching)
    if writer.num_frames == 0:
      raise UserError(f"Driving video {driving} has no frames; give a video with at least one frame.")
    size = writer.size
  return {"frames": writer.num_frames, "size": size, "fps": fps, "has_audio": info.has_audio,
          "render_batch": note}


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--renderer", required=True, help="converted LivePortrait weights folder, or random")
  parser.add_argument("--source", required=True, help="the portrait: a photo of a person (the largest face)")
  parser.add_argument("--face", type=int, default=None, help="which face of the portrait (1 = the largest)")
  parser.add_argument("--face-models", default=None, help="LivePortrait's pretrained_weights folder: its own face "
                      "models (onnxruntime) instead of MediaPipe's")
  parser.add_argument("--driving", required=True, help="the driving video (mp4, mov, ...)")
  parser.add_argument("--out", required=True, help="output mp4")
  parser.add_argument("--no-stitching", action="store_true", help="turn LivePortrait's stitching off")
  parser.add_argument("--eye-retargeting", action="store_true", help="retarget the eyes only (see above)")
  parser.add_argument("--lip-retargeting", action="store_true", help="retarget the lips only (see above)")
  parser.add_argument("--paste-back", action="store_true", help="paste the animated crop into the full portrait")
  parser.add_argument("--crop-driving", action="store_true", help="crop the driving frames around the face even "
                                                                    "when they are square")
  parser.add_argument("--batch-size", type=int, default=None,
                    help="frames per renderer call (default: the largest of 16, 8, 4, 2, 1 whose render program fits the GPU's free memory; 16 on a CPU)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
  parser.add_argument("--max-frames", type=int, default=None, help="render at most this many frames")
  args = parser.parse_args(argv)
  cli.setup_logging()

  def run():
    from playmate_jax import video
    # Check the inputs before building the renderer, so that a mistake is reported at once.
    if args.max_frames is not None and args.max_frames < 1:
      raise UserError(f"--max-frames {args.max_frames} must be at least 1.")
    info = video.probe(args.driving)
    cli.check_output_folder(args.out)
    image, face = find_portrait(args.source, args.face, args.face_models)  # fails now if it has no face
    renderer = load_renderer(args.renderer, args.dtype)
    source_crop = load_source_crop(image, face, renderer.crop_size)
    result = reenact(renderer, args.source, args.driving, args.out, stitching=not args.no_stitching,
                     eye_retargeting=args.eye_retargeting, lip_retargeting=args.lip_retargeting,
                     paste_back=args.paste_back, crop_driving=args.crop_driving, batch_size=args.batch_size,
                     max_frames=args.max_frames, source_crop=source_crop, source_face=face, driving_info=info,
                     face_models=args.face_models)
    h, w = result["size"]
    audio = "with the driving video's audio" if result["has_audio"] else "without audio"
    print(f"wrote {result['frames']} frames ({w}x{h}, {result['fps']:g} fps) {audio} to {args.out}")
    print(f"render batch: {result['render_batch']}{cli.peak_device_memory()}")

  return cli.run(run, oom_fix="rerun with a smaller --batch-size (frames per renderer call: 8, 4, 2 or 1)")


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
