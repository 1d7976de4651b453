"""Preprocessing: generated videos (tests/videos.py) -> a playmate_clips dataset that stage 1 trains on.

One uninterrupted run over the whole collection (good videos in five containers, three frame rates, VFR and
rotations, plus every kind of broken file) is shared by the tests; the kill test reruns it in subprocesses.
Tiny random renderer weights (64x64 crops), the log-mel encoder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from playmate_jax import configlib
from playmate_jax.data import builder, decode, preprocess, videostore
from playmate_jax.errors import UserError
from tests import videos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS, HOP = 25, 640


def settings(videos_dir, out, **kw):
  return preprocess.Settings(videos=str(videos_dir), out=str(out), renderer="random:tiny", workers=0,
                             batch_size=32, progress=False, **kw)


@pytest.fixture(scope="module")
def collection(video_collection):
  return video_collection


@pytest.fixture(scope="module")
def preprocessed(collection, tmp_path_factory):
  folder, _ = collection
  out = tmp_path_factory.mktemp("data")
  report = preprocess.Preprocessor(settings(folder, out)).run()
  return out, report


def records(out):
  """{split: [record dict]} of a written dataset."""
  b = tfds.builder_from_directory(builder.version_dir(out))
  return {split: [b.as_data_source(split)[i] for i in range(n)] for split, n in
          ((s, len(b.as_data_source(s))) for s in ("train", "test"))}


def test_good_videos_become_clips_of_the_right_length_with_aligned_clicks(collection, preprocessed):
  folder, expect = collection
  out, report = preprocessed
  store = videostore.VideoStore(str(out))
  by_clip = {r["clip_id"].decode(): r for split in records(out).values() for r in split}
  good = [name for name, e in expect.items() if e["reject"] is None]
  assert report["accepted"] == len(good)
  for name in good:
    meta = store.load(name, os.path.join(folder, name))
    assert meta["status"] == "accepted", name
    clips = meta["clips"]
    assert len(clips) == 1, (name, clips)  # a steady face throughout: one clip, the whole video
    rec = by_clip[f"{name}#0"]
    n = int(rec["num_frames"])
    assert abs(n - expect[name]["duration"] * FPS) <= 1, (name, n)
    assert clips[0]["start"] <= 1
    assert len(rec["audio"]["waveform"]) == n * HOP and rec["audio"]["features"].shape == (n, 80)
    assert rec["motion"]["exp"].shape == (n, 21, 3) and np.isfinite(rec["motion"]["exp"]).all()
    # Each click (3x louder than the speech) lands in the frame whose 40 ms hold its time.
    peak = np.abs(rec["audio"]["waveform"].astype(np.float32) / 32768.0).reshape(n, HOP).max(axis=1)
    loud = np.flatnonzero(peak > 0.6)
    groups = np.split(loud, np.flatnonzero(np.diff(loud) > 2) + 1)
    found = [int(g[np.argmax(peak[g])]) + clips[0]["start"] for g in groups if len(g)]
    clicks = sorted(expect[name]["clicks"])
    assert len(found) == len(clicks), (name, found, clicks)
    assert all(abs(f - np.floor(t * FPS)) <= 1 for f, t in zip(found, clicks)), (name, found, clicks)


@pytest.mark.parametrize("name, fps", [("flash.mp4", 25), ("flash_30fps_rot270.mov", 30)])
def test_picture_and_sound_line_up_frame_by_frame(tmp_path, name, fps):
  """A frame flashed at the instant of a click: after decoding, resampling and cropping, the bright crop and
  the click fall in the same 25 fps frame. (At 30 fps the times are ones whose 30 fps frame is the one ffmpeg's
  fps filter keeps for that 25 fps frame, the nearest in time; a flash on a dropped frame would vanish.)"""
  times = (1.005, 2.605, 3.285)  # 25 fps frames 25, 65, 82
  rotation = 270 if "rot" in name else None
  size = (240, 320) if rotation else (320, 240)
  videos.talking_face(tmp_path / name, 4.0, fps=fps, size=size, rotation=rotation, clicks=times, flashes=times)
  p = decode.prepare_video(decode.Job(str(tmp_path), name, str(tmp_path / "tmp"), 64,
                                              preprocess.tracking.TrackSettings()))
  assert p.rejection is None and len(p.clips) == 1, p
  brightness = np.load(p.crops[0]).mean(axis=(1, 2, 3))
  flashed = p.clips[0].start + np.flatnonzero(brightness > np.median(brightness) + 15)
  audio = np.abs(np.load(p.audio))
  clicked = [int(np.argmax(audio[int((t - 0.1) * 16000):int((t + 0.1) * 16000)])) / 16000 + t - 0.1 for t in times]
  clicked = np.floor(np.asarray(clicked) * FPS).astype(int)
  assert list(clicked) == [int(t * FPS) for t in times]
  assert list(flashed) == list(clicked), (flashed, clicked)


def test_every_broken_input_is_rejected_with_its_reason(collection, preprocessed):
  _, expect = collection
  out, report = preprocessed
  with open(os.path.join(out, preprocess.REJECTS_FILE)) as f:
    rejects = {r["file"]: r for r in map(json.loads, f)}
  broken = {name: e["reject"] for name, e in expect.items() if e["reject"] is not None}
  assert {name: r["kind"] for name, r in rejects.items()} == broken
  assert all(len(r["reason"].split()) >= 2 for r in rejects.values())  # words, not codes
  assert report["rejected"] == len(broken) and sum(report["rejected_by_reason"].values()) == len(broken)
  assert report["clips"] == report["splits"]["train"] + report["splits"]["test"] and report["splits"]["test"] >= 1
  with open(os.path.join(out, preprocess.REPORT_FILE)) as f:
    assert json.load(f)["videos_seen"] == len(expect)


def test_rerun_is_a_no_op_and_new_settings_are_refused(collection, preprocessed):
  folder, _ = collection
  out, _ = preprocessed
  shards = sorted(os.listdir(builder.version_dir(out)))
  stamp = os.path.getmtime(os.path.join(builder.version_dir(out), "dataset_info.json"))
  report = preprocess.Preprocessor(settings(folder, out)).run()
  assert report["run_videos"] == 0
  assert sorted(os.listdir(builder.version_dir(out))) == shards
  assert os.path.getmtime(os.path.join(builder.version_dir(out), "dataset_info.json")) == stamp
  with pytest.raises(UserError, match="other settings"):
    preprocess.Preprocessor(settings(folder, out, dtype="bfloat16"))


def test_killed_run_resumes_to_the_same_dataset(collection, tmp_path):
  folder, expect = collection
  subset = tmp_path / "videos"  # three good videos and a broken one keep this test short
  subset.mkdir()
  names = [n for n, e in expect.items() if e["reject"] is None][:3] + ["no_audio.mp4"]
  for name in names:
    os.symlink(os.path.join(folder, name), subset / name)
  uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
  preprocess.Preprocessor(settings(subset, uninterrupted)).run()

  cmd = [sys.executable, os.path.join(ROOT, "pipelines", "preprocess.py"), "--videos", str(subset), "--out",
         str(resumed), "--renderer", "random:tiny", "--workers", "1", "--batch-size", "32", "--no-progress"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
  done = resumed / videostore.WORK_DIR / "videos"
  deadline = time.time() + 240
  while not (done.is_dir() and any(n.endswith(".npz") for n in os.listdir(done))):
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    assert time.time() < deadline
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # the job and its decode worker, mid-run
  proc.wait()
  assert sum(n.endswith(".json") for n in os.listdir(done)) < len(names)
  assert not os.path.isdir(builder.version_dir(resumed))
  rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "4 videos seen, 3 accepted, 1 rejected (no_audio 1)" in rerun.stdout

  got, want = records(resumed), records(uninterrupted)
  for split in ("train", "test"):
    assert [r["clip_id"] for r in got[split]] == [r["clip_id"] for r in want[split]]
    for a, b in zip(got[split], want[split]):
      for key in builder.MOTION_KEYS:
        # Float32 round-off only: XLA:CPU's motion extractor can differ in the last bits between a process with
        # one device and the test's (eight fake devices) for a batch's last row; crops and clips are the same.
        np.testing.assert_allclose(a["motion"][key], b["motion"][key], rtol=1e-4, atol=1e-4)
      np.testing.assert_array_equal(a["audio"]["waveform"], b["audio"]["waveform"])
      np.testing.assert_array_equal(a["audio"]["features"], b["audio"]["features"])
      assert a["reference_frame"] == b["reference_frame"] and a["emotion"] == b["emotion"]
  for name in ("stats.json", "clips.json"):
    with open(os.path.join(builder.version_dir(resumed), name)) as f1, \
         open(os.path.join(builder.version_dir(uninterrupted), name)) as f2:
      a, b = json.load(f1), json.load(f2)
      assert jax.tree.structure(a) == jax.tree.structure(b)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):  # statistics of the motion: the same round-off
        assert x == y if not isinstance(x, float) else x == pytest.approx(y, rel=1e-4, abs=1e-4)


def test_stage1_trains_on_the_preprocessed_folder(preprocessed, tmp_path):
  import jax
  from playmate_jax import run as run_lib
  from playmate_jax.train import mesh as mesh_lib
  from playmate_jax.train.trainer import Trainer
  out, _ = preprocessed
  config = configlib.apply_overrides(
      configlib.load_config(os.path.join(ROOT, "configs", "stage1.py") + ":tiny"),
      {"data.name": "playmate_clips", "data.data_dir": str(out), "train.num_steps": "4", "train.ckpt_every": "4",
       "train.eval_every": "4", "train.log_every": "2"})
  Trainer(config, str(tmp_path), mesh=mesh_lib.make_mesh(jax.devices()[:1])).run()
  run = run_lib.restore_run(str(tmp_path), ema=False)
  assert run.step == 4
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert losses and np.isfinite(losses).all()


def test_one_usable_video_among_broken_ones_gives_a_train_split(collection, tmp_path, caplog):
  """A first try: one talking video and a few broken files. The dataset has a train split only (a warning says
  nothing is held out), the report lists the rejects, and training's evaluation takes the training clip (the
  Trainer loads its evaluation clips with load_eval_clips)."""
  from playmate_jax.data import loader
  folder, _ = collection
  subset = tmp_path / "videos"
  subset.mkdir()
  for name in ("talk_25fps.mp4", "notes.mp4", "no_face.mp4", "empty.mp4"):
    os.symlink(os.path.join(folder, name), subset / name)
  out = tmp_path / "data"
  with caplog.at_level("WARNING"):
    report = preprocess.Preprocessor(settings(subset, out)).run()
  assert report["accepted"] == 1 and report["rejected"] == 3 and report["splits"] == {"train": 1, "test": 0}
  assert any("none is held out" in r.getMessage() for r in caplog.records)
  assert tfds.builder_from_directory(builder.version_dir(out)).info.splits.keys() == {"train"}
  config = configlib.apply_overrides(
      configlib.load_config(os.path.join(ROOT, "configs", "stage1.py") + ":tiny"),
      {"data.name": "playmate_clips", "data.data_dir": str(out)})
  assert loader.load_dataset_info(config)["splits"] == {"train": 1}
  caplog.clear()
  with caplog.at_level("WARNING"):
    clips = loader.load_eval_clips(config)
  assert [c["clip_id"] for c in clips] == ["talk_25fps.mp4#0"]
  assert any("no 'test' split" in r.getMessage() for r in caplog.records)


def test_emotion_csv_rows_for_missing_files_are_reported(tmp_path, caplog):
  table = tmp_path / "labels.csv"
  table.write_text("file,emotion\nclip.mp4,happy\ngone.mp4,sad\nalso/gone.mp4,angry\n")
  with caplog.at_level("WARNING"):
    labels = preprocess.emotion_labels(str(table), ["x/clip.mp4"])
  assert labels == {"x/clip.mp4": 4}
  said = [r.getMessage() for r in caplog.records]
  assert len(said) == 1 and said[0].startswith("2 rows of ") and "'also/gone.mp4'" in said[0]


def test_emotion_labels_from_mead_folders_and_csv(tmp_path):
  paths = ["M003/video/front/angry/level_1/001.mp4", "W009/video/front/surprised/level_3/014.mp4", "x/clip.mp4"]
  assert preprocess.emotion_labels("mead", paths) == {paths[0]: 0, paths[1]: 7, paths[2]: -1}
  table = tmp_path / "labels.csv"
  table.write_text("file,emotion\nclip.mp4,happy\nM003/video/front/angry/level_1/001.mp4,5\n")
  assert preprocess.emotion_labels(str(table), paths) == {paths[0]: 5, paths[1]: -1, paths[2]: 4}
  table.write_text("clip.mp4,joyful\n")
  with pytest.raises(UserError, match="labels.csv, line 1: emotion 'joyful' is unknown"):
    preprocess.emotion_labels(str(table), paths)
  assert preprocess.speaker_of("M003/video/a.mp4") == "M003" and preprocess.speaker_of("talk.mp4") == "talk"
