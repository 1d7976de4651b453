"""Preprocessing: a folder of raw talking videos becomes a `playmate_clips` dataset (`pipelines/preprocess.py`).

Per video, in a pool of decode worker processes (`data.decode.prepare_video`):
  probe -> reject what is not a usable video (empty, unreadable, a still image, no audio, too short) ->
  scan at 25 fps on shrunk frames (shot cuts, faces: `tracking.scan`) -> clips of one steady face, 3-30 s,
  one LivePortrait crop each (`tracking.find_clips`) -> decode again at full size and crop each clip's frames to
  the renderer's crop size -> the crops and the 16 kHz mono audio go to temporary .npy files.
Per video, in the main process, which owns the accelerator (`Preprocessor.finish_video`):
  the motion extractor M over the crops in fixed-size jitted batches -> the audio features of the whole
  soundtrack (so clip edges keep their context), sliced per clip -> one result file per video, written
  atomically (`data.videostore.VideoStore`).
At the end (`Preprocessor.assemble`): every accepted video's clips, in sorted file order, become the TFDS
dataset (train and test splits, statistics), written beside and swapped into place; `report.json` and
`rejects.jsonl` describe the run.

Resumable and idempotent: a video is done once its result file exists (and the video file has not changed
since), so a rerun skips it; the dataset is rebuilt from the result files, so no clip is ever written twice, a
crash or SIGKILL loses only the videos in flight, and an interrupted run finishes with the dataset an
uninterrupted one writes. Every number that shapes the result is recorded in `.preprocess/settings.json`; a
rerun with other settings is refused rather than mixing the two.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from playmate_jax import configlib
from playmate_jax.audio import get_encoder
from playmate_jax.data import builder, tracking
from playmate_jax.data.decode import FPS, HOP, SAMPLE_RATE, Job, Prepared, prepared, workers
from playmate_jax.data.videostore import VideoStore, source_stamp, write_atomic
from playmate_jax.errors import UserError
from playmate_jax.face import finder as face_finder
from playmate_jax.motion import EMOTIONS
from playmate_jax.renderer.api import Renderer
from playmate_jax.timing import Stopwatch

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ts", ".mts")
REPORT_FILE, REJECTS_FILE = "report.json", "rejects.jsonl"
JPEG_QUALITY = 95
# MEAD's emotion folder names (the dataset's label order), with the other spellings collections use.
EMOTION_ALIASES = {"anger": 0, "disgust": 2, "fearful": 3, "happiness": 4, "sadness": 6, "surprise": 7,
                   "calm": 5, **{name: i for i, name in enumerate(EMOTIONS)}}


# --- what goes in: the videos, their speakers and emotions ------------------------------------------------------

def list_videos(root: str) -> list[str]:
  """Paths (relative to root, '/'-separated, sorted) of every video file under root."""
  if not os.path.isdir(root):
    raise UserError(f"Videos folder {root} does not exist; pass the folder that holds your videos with --videos.")
  out = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in files:
      if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."):
        out.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
  return sorted(out)


def speaker_of(relpath: str) -> str:
  """A video's speaker: its first folder under --videos (e.g. MEAD's M003/...), or its file name when it lies
  directly in --videos (one speaker per file)."""
  parts = relpath.split("/")
  return parts[0] if len(parts) > 1 else os.path.splitext(parts[0])[0]


def emotion_labels(spec: str | None, relpaths: list[str]) -> dict[str, int]:
  """Emotion label (-1 unknown, else 0..7 in MEAD order) per video from `--emotions`: None (all unknown),
  'mead' (a folder named after the emotion anywhere in the path) or a CSV file of `file,emotion` rows (file
  relative to --videos or a bare file name; emotion a name or a number)."""
  if not spec:
    return {p: -1 for p in relpaths}
  if spec == "mead":
    return {p: next((EMOTION_ALIASES[d.lower()] for d in p.split("/")[:-1] if d.lower() in EMOTION_ALIASES), -1)
            for p in relpaths}
  if not os.path.isfile(spec):
    raise UserError(f"Emotion labels {spec} do not exist; pass `--emotions mead` or a CSV file of file,emotion rows.")
  table = {}
  with open(spec, newline="") as f:
    for line, row in enumerate(csv.reader(f), 1):
      if not row or row[0].strip().startswith("#") or (line == 1 and row[0].strip().lower() == "file"):
        continue
      if len(row) < 2:
        raise UserError(f"{spec}, line {line}: expected `file,emotion`; fix the row.")
      name, value = row[0].strip(), row[1].strip().lower()
      if value in EMOTION_ALIASES:
        table[name] = EMOTION_ALIASES[value]
      elif value.lstrip("-").isdigit() and -1 <= int(value) <= 7:
        table[name] = int(value)
      else:
        raise UserError(f"{spec}, line {line}: emotion {row[1].strip()!r} is unknown; use one of "
                        f"{', '.join(EMOTIONS)} or a number -1..7.")
  known = set(relpaths) | {os.path.basename(p) for p in relpaths}
  unmatched = sorted(name for name in table if name not in known)
  if unmatched:  # a typo in a path would otherwise lose its label silently
    log.warning("%d row%s of %s name%s no video under --videos (e.g. %r); %s not used.", len(unmatched),
                "" if len(unmatched) == 1 else "s", spec, "s" if len(unmatched) == 1 else "", unmatched[0],
                "its label is" if len(unmatched) == 1 else "their labels are")
  return {p: table.get(p, table.get(os.path.basename(p), -1)) for p in relpaths}


# --- the main process: motion, audio features, the dataset ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
  """One preprocessing run (the CLI's flags)."""
  videos: str
  out: str
  renderer: str = "random"
  audio_encoder: str = "mel"        # "mel" or a converted wav2vec2/HuBERT folder
  emotions: str | None = None       # None, "mead" or a CSV file
  workers: int = 4                  # decode worker processes (0: decode in the main process)
  batch_size: int = 128             # crops per motion-extractor call
  dtype: str = "float32"            # the motion extractor's compute dtype
  test_fraction: float = 0.05       # clips held out in the "test" split (by a hash of the clip id)
  track: tracking.TrackSettings = tracking.TrackSettings()
  progress: bool = True


def audio_config(encoder: str):
  """The stage-1 config's audio settings with the encoder `--audio-encoder` names."""
  config = configlib.load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "stage1.py"))
  audio = config.audio.copy_and_resolve_references()
  audio.unlock()
  if encoder != "mel":
    if not os.path.isdir(encoder):
      raise UserError(f"Audio encoder {encoder} is neither `mel` nor a folder; convert a wav2vec2/HuBERT checkpoint "
                      "with `python pipelines/convert.py wav2vec2 --src HF_DIR --dst DIR` and pass DIR.")
    audio.encoder, audio.weights = "wav2vec2", os.path.abspath(encoder)
  return audio


class Preprocessor:
  """Runs `Settings`: decode workers feeding one accelerator process (see the module docstring)."""

  def __init__(self, settings: Settings):
    self.s = settings
    self.store = VideoStore(settings.out)
    self.audio_config = audio_config(settings.audio_encoder)
    self.encoder = get_encoder(self.audio_config)
    self.store.check_settings(self.fingerprint())
    self.renderer = Renderer.from_spec(settings.renderer, settings.dtype)
    self.watch = Stopwatch()  # the main process's stages; the workers' come with their results
    face_finder.finder(settings.track.face_models)  # face models missing or unreadable: one clear error, now
    with self.watch("compile"):
      self.motion(np.zeros((1, self.renderer.crop_size, self.renderer.crop_size, 3), np.uint8))

  def fingerprint(self) -> dict:
    """Everything that changes the result files."""
    renderer = self.s.renderer
    manifest = os.path.join(renderer, "manifest.json")
    if os.path.isfile(manifest):
      with open(manifest, "rb") as f:
        renderer = "sha1:" + hashlib.sha1(f.read()).hexdigest()
    return dict(renderer=renderer, dtype=self.s.dtype, audio_encoder=self.encoder.name,
                track=dataclasses.asdict(self.s.track), fps=FPS, sample_rate=SAMPLE_RATE)

  # --- per video ------------------------------------------------------------------------------------------------

  def motion(self, crops: np.ndarray) -> dict[str, np.ndarray]:
    """M over crops [n, S, S, 3] uint8 in fixed batches (one compilation); motion fields [n, ...] float32."""
    b = self.s.batch_size
    n = len(crops)
    outs = []
    for i in range(0, n, b):  # dispatched asynchronously, fetched together
      batch = crops[i:i + b]
      if len(batch) < b:
        batch = np.concatenate([batch, np.zeros((b - len(batch),) + batch.shape[1:], batch.dtype)])
      outs.append(self.renderer.extract_motion(batch))
    return {k: np.concatenate([np.asarray(o[k]) for o in outs])[:n].astype(np.float32) for k in builder.MOTION_KEYS}

  def finish_video(self, p: Prepared, source: str) -> dict:
    """Motion and audio features of a prepared video, saved; returns its metadata."""
    meta = dict(file=p.relpath, source=source_stamp(source), frames=p.frames)
    if p.rejection is not None:
      meta.update(status="rejected", kind=p.rejection.kind, reason=p.rejection.reason)
      self.store.save(meta)
      return meta
    audio = np.load(p.audio)
    with self.watch("audio_features"):
      features = self.encoder.encode(audio)
    wave = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    arrays, clips = {}, []
    for k, (clip, crops_file) in enumerate(zip(p.clips, p.crops)):
      crops = np.load(crops_file)
      with self.watch("motion"):
        motion = self.motion(crops)
      for name, value in motion.items():
        arrays[f"{k}/{name}"] = value
      arrays[f"{k}/waveform"] = wave[clip.start * HOP:clip.stop * HOP]
      arrays[f"{k}/features"] = features[clip.start:clip.stop].astype(np.float16)
      ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(crops[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
      arrays[f"{k}/reference_frame"] = np.frombuffer(jpeg.tobytes(), np.uint8)
      clips.append(dict(start=clip.start, stop=clip.stop, square=list(clip.square),
                        crop_matrix=np.asarray(clip.matrix).round(4).tolist()))
    meta.update(status="accepted", clips=clips)
    with self.watch("save"):
      self.store.save(meta, arrays)
    for f in p.crops + [p.audio]:
      with contextlib.suppress(FileNotFoundError):
        os.remove(f)
    return meta

  # --- the run ----------------------------------------------------------------------------------------------------

  def run(self) -> dict:
    """Processes every video not done yet, then writes the dataset and the report; returns the report."""
    s, t0 = self.s, time.time()
    relpaths = list_videos(s.videos)
    if not relpaths:
      raise UserError(f"No video files ({', '.join(VIDEO_EXTENSIONS)}) under {s.videos}; check --videos.")
    emotions = emotion_labels(s.emotions, relpaths)
    results = {p: self.store.load(p, os.path.join(s.videos, p)) for p in relpaths}
    todo = [p for p in relpaths if results[p] is None]
    self.store.clear_tmp()  # crops of videos in flight when an earlier run died
    size = self.renderer.crop_size
    jobs = [Job(os.path.abspath(s.videos), p, self.store.tmp, size, s.track) for p in todo]
    frames_done, worker_seconds = 0, Counter()
    bar = tqdm(total=len(relpaths), initial=len(relpaths) - len(todo), unit="video", desc="preprocess",
               dynamic_ncols=True, disable=not s.progress)
    with bar, workers(s.workers) as pool:
      for p in prepared(pool, jobs, max(1, s.workers) + 2):
        if p.error:
          self._log_error(p)
        results[p.relpath] = self.finish_video(p, os.path.join(s.videos, p.relpath))
        frames_done += p.frames
        worker_seconds.update(p.seconds)
        bar.set_postfix_str(f"{frames_done / max(time.time() - t0, 1e-9):.0f} frames/s", refresh=False)
        bar.update(1)
    self.store.clear_tmp()
    report = self.assemble(relpaths, results, emotions)
    elapsed = time.time() - t0
    rounded = lambda d: {k: round(v, 2) for k, v in sorted(d.items())}
    report.update(run_seconds=round(elapsed, 2), run_videos=len(todo), run_frames=frames_done,
                  run_frames_per_second=round(frames_done / max(elapsed, 1e-9), 1),
                  run_worker_seconds=rounded(worker_seconds), run_main_seconds=rounded(self.watch.seconds),
                  workers=s.workers)
    write_atomic(os.path.join(s.out, REPORT_FILE), json.dumps(report, indent=1).encode())
    return report

  def _log_error(self, p: Prepared) -> None:
    with open(os.path.join(self.store.root, "errors.log"), "a") as f:
      f.write(f"--- {p.relpath}\n{p.error}\n")

  def examples(self, relpaths: list[str], results: Mapping[str, dict], emotions: Mapping[str, int],
               test: bool) -> Iterator[dict]:
    """The dataset examples of one split, in file order then clip order (read lazily from the store)."""
    for p in relpaths:
      meta = results[p]
      if meta["status"] != "accepted":
        continue
      arrays = None
      for k in range(len(meta["clips"])):
        clip_id = f"{p}#{k}"
        if (not self._all_train and _is_test(clip_id, self.s.test_fraction, self._forced_test)) != test:
          continue
        arrays = arrays if arrays is not None else self.store.arrays(p)
        motion = {name: arrays[f"{k}/{name}"] for name in builder.MOTION_KEYS}
        yield dict(clip_id=clip_id, speaker_id=speaker_of(p), emotion=emotions[p], motion=motion,
                   audio=dict(waveform=arrays[f"{k}/waveform"], features=arrays[f"{k}/features"]),
                   reference_frame=arrays[f"{k}/reference_frame"].tobytes())

  def assemble(self, relpaths: list[str], results: Mapping[str, dict], emotions: Mapping[str, int]) -> dict:
    """Writes the dataset from the finished videos (atomically replacing an older one) and rejects.jsonl;
    returns the report."""
    s = self.s
    accepted = [p for p in relpaths if results[p]["status"] == "accepted"]
    rejected = [p for p in relpaths if results[p]["status"] == "rejected"]
    clip_ids = [f"{p}#{k}" for p in accepted for k in range(len(results[p]["clips"]))]
    self._forced_test = _forced_test(clip_ids, s.test_fraction)
    test_ids = [c for c in clip_ids if _is_test(c, s.test_fraction, self._forced_test)]
    self._all_train = bool(clip_ids) and len(test_ids) in (0, len(clip_ids))
    if self._all_train:  # one clip, or every clip hashed to the test split: train on all, hold none out
      test_ids = []
      if s.test_fraction > 0:
        log.warning("Only %d clip%s: all go to the train split and none is held out for testing (training then "
                    "evaluates on training clips); add videos for a held-out split.", len(clip_ids),
                    "" if len(clip_ids) == 1 else "s")
    frames = sum(c["stop"] - c["start"] for p in accepted for c in results[p]["clips"])
    with open(os.path.join(s.out, REJECTS_FILE) + ".tmp", "w") as f:
      for p in rejected:
        f.write(json.dumps(dict(file=p, reason=results[p]["reason"], kind=results[p]["kind"])) + "\n")
    os.replace(os.path.join(s.out, REJECTS_FILE) + ".tmp", os.path.join(s.out, REJECTS_FILE))
    report = dict(videos_seen=len(relpaths), accepted=len(accepted), rejected=len(rejected),
                  rejected_by_reason=dict(sorted(Counter(results[p]["kind"] for p in rejected).items())),
                  clips=len(clip_ids), frames=frames, hours=round(frames / FPS / 3600, 4),
                  splits=dict(train=len(clip_ids) - len(test_ids), test=len(test_ids)),
                  audio_encoder=self.encoder.name, dataset=builder.version_dir(s.out))
    if len(clip_ids) - len(test_ids) == 0:
      raise UserError(f"No usable clip was found in {s.videos} (see {os.path.join(s.out, REJECTS_FILE)} for why "
                      "each video was rejected); nothing to write.")
    stamp = json.dumps(dict(results={p: results[p] for p in relpaths}, emotions=emotions,
                            test_fraction=s.test_fraction), sort_keys=True)
    stamp_path = os.path.join(self.store.root, "dataset.json")
    final = builder.version_dir(s.out)
    if os.path.isdir(final) and os.path.isfile(stamp_path) and open(stamp_path).read() == stamp:
      return report  # the dataset already holds exactly these clips
    self._write(relpaths, results, emotions, final)
    write_atomic(stamp_path, stamp.encode())
    return report

  def _write(self, relpaths, results, emotions, final: str) -> None:
    tmp = tempfile.mkdtemp(prefix=".dataset-", dir=self.s.out)
    try:
      splits = {"train": self.examples(relpaths, results, emotions, test=False)}
      if not self._all_train:  # TFDS cannot write an empty split
        splits["test"] = self.examples(relpaths, results, emotions, test=True)
      tfds.disable_progress_bar()
      with contextlib.redirect_stdout(io.StringIO()):
        written = builder.write_dataset(tmp, splits, encoder_name=self.encoder.name,
                                        feature_dim=self.encoder.feature_dim,
                                        audio_config=self.audio_config.to_dict())
      os.makedirs(os.path.dirname(final), exist_ok=True)
      old = final + ".old"
      shutil.rmtree(old, ignore_errors=True)
      if os.path.isdir(final):
        os.rename(final, old)
      os.rename(written, final)
      shutil.rmtree(old, ignore_errors=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


def _hash_fraction(clip_id: str) -> float:
  return int(hashlib.sha1(clip_id.encode()).hexdigest()[:12], 16) / float(16 ** 12)


def _forced_test(clip_ids: list[str], fraction: float) -> str | None:
  """The clip put in the test split when the hash put none there (there are at least two clips)."""
  if fraction <= 0 or len(clip_ids) < 2 or any(_hash_fraction(c) < fraction for c in clip_ids):
    return None
  return min(clip_ids, key=_hash_fraction)


def _is_test(clip_id: str, fraction: float, forced: str | None) -> bool:
  return _hash_fraction(clip_id) < fraction or clip_id == forced


def summary_line(report: Mapping[str, Any]) -> str:
  """The line printed at the end of a run."""
  reasons = ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items())
  return (f"preprocess: {report['videos_seen']} videos seen, {report['accepted']} accepted, {report['rejected']} "
          f"rejected{f' ({reasons})' if reasons else ''}; {report['clips']} clips, {report['hours']:.3f} h "
          f"written to {report['dataset']}")
