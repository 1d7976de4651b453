"""Raw talking videos -> a `playmate_clips` dataset that `launch.py` trains on.

  python pipelines/preprocess.py --videos DIR --out DATA_DIR --renderer WEIGHTS_DIR|random
                                 --audio-encoder mel|WEIGHTS_DIR [--emotions mead|FILE.csv] [--workers N]

Then: python launch.py --config=configs/stage1.py --workdir=W --config.data.data_dir=DATA_DIR

Every video file under DIR (mp4, mkv, avi, webm, mov, ...; any frame rate, variable or not; phone rotation
applied) is resampled to 25 fps with its audio at 16 kHz mono, its speaker's face tracked, and cut into clips of
one steady face, 3 to 30 s long, each cropped with one fixed square in LivePortrait's convention. The motion
extractor (WEIGHTS_DIR: LivePortrait's weights converted by `pipelines/convert.py liveportrait`; `random` for
trying the pipeline) gives each frame's motion, the audio encoder (`mel`, or a wav2vec2/HuBERT folder from
`pipelines/convert.py wav2vec2`) its audio features. The speaker of a video is its first folder under DIR, or
the file itself when it lies directly in DIR. Emotion labels: MEAD's folder names (`--emotions mead`) or a CSV
of `file,emotion` rows; others are unknown (-1).

Rerun the same command to resume after a crash: finished videos are skipped, and the dataset is rebuilt from
them. DATA_DIR/report.json sums the run up; DATA_DIR/rejects.jsonl says why each rejected file was rejected.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from playmate_jax import cli  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
  from playmate_jax.data.tracking import TrackSettings
  t = TrackSettings()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--videos", required=True, help="folder of video files (searched recursively)")
  p.add_argument("--out", required=True, help="DATA_DIR: the dataset goes to DATA_DIR/playmate_clips/1.0.0")
  p.add_argument("--renderer", default="random", help="converted LivePortrait weights folder, or random")
  p.add_argument("--audio-encoder", default="mel", help="mel, or a converted wav2vec2/HuBERT folder")
  p.add_argument("--emotions", default=None, help="mead (from folder names) or a CSV of file,emotion rows")
  p.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)),
                 help="decode worker processes (0: decode in this process)")
  p.add_argument("--batch-size", type=int, default=128, help="crops per motion-extractor call")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="motion extractor compute dtype")
  p.add_argument("--test-fraction", type=float, default=0.05, help="share of clips held out in the test split")
  p.add_argument("--detect-every", type=int, default=t.detect_every, help="run the face detector every n frames")
  p.add_argument("--face-models", default=None, help="LivePortrait's pretrained_weights folder: track faces with its "
                 "own insightface and landmark models (onnxruntime) instead of MediaPipe's")
  p.add_argument("--min-seconds", type=float, default=t.min_seconds, help="shortest clip kept")
  p.add_argument("--max-seconds", type=float, default=t.max_seconds, help="longer stretches are split")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  cli.setup_logging("WARNING")

  def run():
    from playmate_jax.data import preprocess, tracking
    from playmate_jax.errors import UserError
    if args.detect_every < 1 or not 0 < args.min_seconds <= args.max_seconds or not 0 <= args.test_fraction < 1:
      raise UserError("--detect-every must be >= 1, 0 < --min-seconds <= --max-seconds and 0 <= --test-fraction < 1.")
    track = dataclasses.replace(tracking.TrackSettings(), detect_every=args.detect_every, face_models=args.face_models,
                                min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    os.makedirs(args.out, exist_ok=True)
    settings = preprocess.Settings(
        videos=args.videos, out=args.out, renderer=args.renderer, audio_encoder=args.audio_encoder,
        emotions=args.emotions, workers=args.workers, batch_size=args.batch_size, dtype=args.dtype,
        test_fraction=args.test_fraction, track=track, progress=not args.no_progress)
    report = preprocess.Preprocessor(settings).run()
    print(preprocess.summary_line(report))

  return cli.run(run)


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
