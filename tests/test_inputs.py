"""The files users really have, across the commands that take them: a table of inputs, each checked for its output
(durations, frame counts, audio streams, the face found) or for its one sentence, a non-zero exit and nothing written.

The media are made once per test run (a session fixture) with what the machine has: skimage's photos, PIL for
image formats and EXIF tags, espeak-ng for speech (tests.videos' synthetic speech where it is missing) and the
project's bundled ffmpeg for every container and codec."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from playmate_jax import video
from playmate_jax.audio import load_audio
from playmate_jax.errors import UserError

skimage_data = pytest.importorskip("skimage.data")
PIL = pytest.importorskip("PIL.Image")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FFMPEG = video._ffmpeg()
SPEECH_SECONDS = 2.0


def ffmpeg(*args):
  subprocess.run([FFMPEG, "-y", "-v", "error", *args], check=True)


def _speech(path):
  """About two seconds of speech at 16 kHz mono int16: espeak-ng's voice where installed."""
  if shutil.which("espeak-ng"):
    raw = str(path) + ".raw.wav"
    subprocess.run(["espeak-ng", "-w", raw, "-s", "150", "Hello there, this is my voice on a quiet day."],
                   check=True, capture_output=True)
    ffmpeg("-i", raw, "-t", str(SPEECH_SECONDS), "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", str(path))
    os.remove(raw)
  else:
    import soundfile
    from tests.videos import speech
    soundfile.write(str(path), speech(SPEECH_SECONDS, 16000), 16000, subtype="PCM_16")


# name: (ffmpeg output options, expected seconds or None for a one-sentence refusal, sentence pattern)
AUDIO = {
    "int16.wav": (["-c:a", "pcm_s16le"], SPEECH_SECONDS),
    "float32.wav": (["-c:a", "pcm_f32le"], SPEECH_SECONDS),
    "int24.wav": (["-c:a", "pcm_s24le"], SPEECH_SECONDS),
    "speech.mp3": (["-c:a", "libmp3lame", "-b:a", "64k"], SPEECH_SECONDS),
    "speech.m4a": (["-c:a", "aac", "-b:a", "64k"], SPEECH_SECONDS),
    "speech.opus.ogg": (["-c:a", "libopus", "-b:a", "32k"], SPEECH_SECONDS),
    "speech.flac": (["-c:a", "flac"], SPEECH_SECONDS),
    "rate8k.wav": (["-ar", "8000"], SPEECH_SECONDS),
    "rate22k.wav": (["-ar", "22050"], SPEECH_SECONDS),
    "rate44k.wav": (["-ar", "44100"], SPEECH_SECONDS),
    "rate48k_stereo.wav": (["-ar", "48000", "-ac", "2"], SPEECH_SECONDS),
    "surround51.m4a": (["-ac", "6", "-c:a", "aac"], SPEECH_SECONDS),
    "short_0.3s.wav": (["-t", "0.3"], 0.3),
    "clipped.wav": (["-af", "volume=30dB", "-c:a", "pcm_s16le"], SPEECH_SECONDS),
}


@pytest.fixture(scope="session")
def media(tmp_path_factory):
  d = tmp_path_factory.mktemp("inputs")
  base = d / "base.wav"
  _speech(base)
  files = {"base": str(base)}
  for name, (opts, _) in AUDIO.items():
    files[name] = str(d / name)
    ffmpeg("-i", str(base), *opts, files[name])
  files["silence.wav"] = str(d / "silence.wav")
  ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1.5", "-c:a", "pcm_s16le", files["silence.wav"])
  files["hour.wav"] = str(d / "hour.wav")  # one hour, 8 kHz int16 (58 MB): memory and time stay modest
  ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:sample_rate=8000", "-t", "3600", "-c:a", "pcm_s16le",
         files["hour.wav"])
  files["half_minute.wav"] = str(d / "half_minute.wav")
  ffmpeg("-stream_loop", "-1", "-i", str(base), "-t", "30", "-c:a", "pcm_s16le", files["half_minute.wav"])
  from tests import videos
  files["video.mp4"] = str(d / "video.mp4")
  videos.talking_face(files["video.mp4"], 2.0, seed=3)
  files["silent_video.mp4"] = str(d / "silent_video.mp4")
  videos.no_audio(files["silent_video.mp4"], seconds=1.0)
  files["notes.txt.wav"] = str(d / "notes.txt.wav")
  with open(files["notes.txt.wav"], "w") as f:
    f.write("these are my notes, not a recording\n")
  files.update(_images(d))
  return files


def _images(d) -> dict:
  """The astronaut in every form a user's photo comes in."""
  rgb = skimage_data.astronaut()
  out = {}

  def save_pil(name, image, **kw):
    out[name] = str(d / name)
    image.save(out[name], **kw)

  img = PIL.fromarray(rgb)
  save_pil("gray.png", img.convert("L"))
  rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
  rgba[:, :120, 3] = 0            # a transparent left strip, its colour garbage
  rgba[:, :120, :3] = 0
  save_pil("rgba.png", PIL.fromarray(rgba, "RGBA"))
  out["png16.png"] = str(d / "png16.png")
  cv2.imwrite(out["png16.png"], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
  save_pil("palette.png", img.convert("P", palette=PIL.Palette.ADAPTIVE, colors=256))
  save_pil("cmyk.jpg", img.convert("CMYK"), quality=92)
  for orientation, turn in ((6, PIL.Transpose.ROTATE_90), (8, PIL.Transpose.ROTATE_270)):
    exif = PIL.Exif()
    exif[0x0112] = orientation  # stored turned, displayed upright
    save_pil(f"exif{orientation}.jpg", img.transpose(turn), exif=exif.tobytes(), quality=92)
  save_pil("photo.webp", img, quality=90)
  big = cv2.resize(rgb, (6000, 6000), interpolation=cv2.INTER_CUBIC)
  canvas = np.full((6000, 8000, 3), 180, np.uint8)
  canvas[:, 1000:7000] = big
  save_pil("huge_8000x6000.jpg", PIL.fromarray(canvas), quality=85)
  save_pil("small_96.png", PIL.fromarray(cv2.resize(rgb[40:240, 120:330], (96, 96), interpolation=cv2.INTER_AREA)))
  save_pil("tiny_12.png", PIL.fromarray(cv2.resize(rgb, (12, 12), interpolation=cv2.INTER_AREA)))
  save_pil("border.png", PIL.fromarray(rgb[60:330, 170:440]))   # the face's left side at the image's edge
  save_pil("cat.jpg", PIL.fromarray(skimage_data.chelsea()))
  out["not_an_image.jpg"] = str(d / "not_an_image.jpg")
  with open(out["not_an_image.jpg"], "w") as f:
    f.write("hello")
  return out


@pytest.mark.parametrize("name", [*AUDIO, "silence.wav", "video.mp4"])
def test_audio_inputs_load_as_16khz_mono_of_their_length(media, name):
  wave = load_audio(media[name])
  seconds = {"silence.wav": 1.5, "video.mp4": 2.0}.get(name) or AUDIO[name][1]
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert abs(len(wave) / 16000 - seconds) <= 1 / 25 + (0.03 if name.endswith((".mp3", ".m4a", ".ogg")) else 0)
  assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0
  if name == "silence.wav":
    assert np.abs(wave).max() == 0.0
  elif name != "video.mp4":
    assert np.abs(wave).max() > 0.05  # speech is there (not silence from a wrong decoder)


def test_an_hour_of_audio(media):
  wave = load_audio(media["hour.wav"])
  assert len(wave) == 3600 * 16000 and abs(np.abs(wave).max() - 0.125) < 0.01  # ffmpeg sine: amplitude 1/8


EYES = np.array([[205.0, 103.0], [248.0, 103.0]])


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "png16.png", "palette.png", "cmyk.jpg", "exif6.jpg",
                                  "exif8.jpg", "photo.webp", "huge_8000x6000.jpg", "small_96.png", "border.png"])
def test_image_inputs_give_an_upright_face(media, name):
  from playmate_jax.animate import find_portrait
  from playmate_jax.face import crop as crop_lib
  image, face = find_portrait(media[name], report=lambda s: None)
  assert image.dtype == np.uint8 and image.shape[2] == 3
  if name.startswith("exif"):
    assert image.shape[:2] == (512, 512)
  lm = face.crop_landmarks
  left, right = lm[[36, 39]].mean(0), lm[[42, 45]].mean(0)
  roll = np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))
  assert abs(roll) < 8 and right[0] > left[0]  # shown as displayed: upright, not turned or mirrored
  crop = crop_lib.crop_face(image, lm)
  assert crop.image.shape == (256, 256, 3) and crop.image.std() > 0.05
  if name in ("gray.png", "rgba.png", "png16.png", "palette.png", "cmyk.jpg", "photo.webp"):
    np.testing.assert_allclose(np.stack([left, right]), EYES, atol=8)  # the same photo, the same face
  if name == "rgba.png":
    assert image[:, :100].min() > 240  # transparency shown over white, not as the garbage colour it holds


def _find_portrait(path):
  from playmate_jax.animate import find_portrait
  return find_portrait(path)


@pytest.mark.parametrize("name, read, pattern", [
    ("silent_video.mp4", load_audio, r"^Audio file .*silent_video.mp4 has no audio track; "),
    ("notes.txt.wav", load_audio, r"^Audio file .*notes.txt.wav could not be decoded; "),
    ("cat.jpg", _find_portrait, r"^No human face was found in .*cat.jpg; "),
    ("tiny_12.png", _find_portrait, r"^Image file .*tiny_12.png is only 12x12 pixels; "),
    ("not_an_image.jpg", _find_portrait, r"^Image file .*not_an_image.jpg could not be read; "),
])
def test_refusals_are_one_sentence(media, name, read, pattern):
  with pytest.raises(UserError, match=pattern) as e:
    read(media[name])
  assert len(str(e.value).splitlines()) == 1


# --- whole commands ------------------------------------------------------------------------------------------------

def _animate(stage1_run, image, audio, out, *extra):
  from pipelines import animate
  return animate.main(["--checkpoint", str(stage1_run), "--renderer", "random:tiny", "--image", image,
                       "--audio", audio, "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("image, audio, seconds", [
    ("exif6.jpg", "video.mp4", 2.0),          # a phone photo; a video given as the speech: its sound track
    ("rgba.png", "silence.wav", 1.5),         # pure silence
    ("huge_8000x6000.jpg", "short_0.3s.wav", 0.3),  # shorter than one motion window
])
def test_animate_takes_real_files(stage1_run, media, tmp_path, image, audio, seconds):
  out = tmp_path / "out.mp4"
  assert _animate(stage1_run, media[image], media[audio], out) == 0
  info = video.probe(str(out))
  frames = -(-round(seconds * 16000) * 25 // 16000)
  assert info.has_audio and video.count_frames(str(out)) == frames
  assert abs(info.duration - frames / 25) < 0.05
  assert oct(os.stat(out).st_mode & 0o777) == oct(0o666 & ~_umask())  # like every other output, not 0600
  assert os.path.isfile(tmp_path / "out.motion.npz")


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_animate_refusals_write_nothing(stage1_run, media, tmp_path, capsys, monkeypatch):
  """Each bad input: one sentence, exit 2, nothing written; the face check comes before the renderer is built."""
  from playmate_jax.renderer import api
  built = []
  monkeypatch.setattr(api.Renderer, "from_spec", classmethod(lambda cls, *a: built.append(a) or 1 / 0))
  cases = [(media["cat.jpg"], media["base"], tmp_path / "a.mp4", "No human face was found"),
           (str(tmp_path / "missing.jpg"), media["base"], tmp_path / "b.mp4", "does not exist"),
           (media["exif6.jpg"], media["silent_video.mp4"], tmp_path / "c.mp4", "has no audio track"),
           (media["exif6.jpg"], media["base"], "/proc/out.mp4", "Output folder /proc cannot be written")]
  for image, audio, out, said in cases:
    assert _animate(stage1_run, image, audio, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err
  assert not built and sorted(os.listdir(tmp_path)) == []


def test_full_disk_while_writing_is_one_sentence_and_leaves_nothing(stage1_run, media, tmp_path, capsys,
                                                                    monkeypatch):
  import errno

  from playmate_jax import cli

  def full(path, **arrays):
    raise OSError(errno.ENOSPC, "No space left on device", path)

  monkeypatch.setattr(cli, "save_npz", full)
  assert _animate(stage1_run, media["exif6.jpg"], media["base"], tmp_path / "out.mp4") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "out.motion.npz" in err[0] and "the disk is full" in err[0]
  assert os.listdir(tmp_path) == []


def test_sigterm_mid_render_leaves_no_half_written_video(stage1_run, media, tmp_path):
  """SIGTERM while the frames are being encoded: exit 143, one line, no mp4 and no temporary file left."""
  out = tmp_path / "out.mp4"
  cmd = [sys.executable, os.path.join(ROOT, "pipelines", "animate.py"), "--checkpoint", str(stage1_run),
         "--renderer", "random:tiny", "--image", media["exif6.jpg"], "--audio", media["half_minute.wav"], "--out", str(out),
         "--no-progress", "--batch-size", "4"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
  deadline = time.time() + 240
  while not any(n.startswith(".video-") for n in os.listdir(tmp_path)):  # rendering has started
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    assert time.time() < deadline
    time.sleep(0.1)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 143, err.decode()[-2000:]
  assert err.decode().strip().splitlines()[-1].startswith("terminated: stopped")
  assert [n for n in os.listdir(tmp_path) if not n.endswith(".motion.npz")] == []


def test_sample_never_overwrites_an_earlier_motion_file(stage1_run, media, tmp_path):
  from pipelines import sample
  audio = tmp_path / "talk.wav"
  shutil.copy(media["base"], audio)
  assert sample.main(["--checkpoint", str(stage1_run), "--audio", str(audio)]) == 0
  first = os.path.getmtime(tmp_path / "talk.motion.npz")
  assert sample.main(["--checkpoint", str(stage1_run), "--audio", str(audio)]) == 0
  assert os.path.getmtime(tmp_path / "talk.motion.npz") == first and os.path.isfile(tmp_path / "talk-2.motion.npz")


def test_second_training_process_on_a_workdir_is_refused(tmp_path):
  import jax

  from playmate_jax import configlib
  from playmate_jax.train import mesh as mesh_lib
  from playmate_jax.train.trainer import Trainer
  config = configlib.apply_overrides(configlib.load_config(os.path.join(ROOT, "configs", "stage1.py") + ":tiny"),
                                     {"train.num_steps": "1"})
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  first = Trainer(config, str(tmp_path / "run"), mesh=mesh)
  with pytest.raises(UserError, match=r"^Workdir .*run is in use by another training process \(pid \d+\)"):
    Trainer(config, str(tmp_path / "run"), mesh=mesh)
  first._lock.close()
  Trainer(config, str(tmp_path / "run"), mesh=mesh)._lock.close()  # free again


def test_stage2_without_init_from_writes_nothing(tmp_path):
  import jax

  from playmate_jax import configlib
  from playmate_jax.train import mesh as mesh_lib
  from playmate_jax.train.trainer import Trainer
  config = configlib.load_config(os.path.join(ROOT, "configs", "stage2.py") + ":tiny")
  with pytest.raises(UserError, match="config.init_from is empty"):
    Trainer(config, str(tmp_path / "run2"), mesh=mesh_lib.make_mesh(jax.devices()[:1]))
  assert not os.path.exists(tmp_path / "run2")


def test_preprocess_takes_every_codec_and_sound_longer_or_shorter(tmp_path):
  """10-bit HEVC, AV1 in WebM, 60 fps, sound longer and shorter than the picture: one clip each, 25 fps, as long as
  both picture and sound last."""
  from playmate_jax.data import builder, preprocess
  from tests import videos
  src = tmp_path / "src.mp4"
  videos.talking_face(str(src), 4.0, seed=5)
  folder = tmp_path / "videos"
  folder.mkdir()
  x264 = ["-c:v", "libx264", "-preset", "ultrafast"]
  made = {
      "hevc10.mp4": (["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error", "-c:a", "copy"],
                     100),
      "av1.webm": (["-c:v", "libsvtav1", "-preset", "12", "-svtav1-params", "log-level=0", "-c:a", "libopus"], 100),
      "fps60.mp4": (["-filter:v", "fps=60", *x264, "-c:a", "copy"], 100),
      "sound_longer.mp4": (["-filter_complex", "[0:a]apad=pad_dur=2[a]", "-map", "0:v", "-map", "[a]", *x264,
                            "-c:a", "aac"], 100),
      "sound_shorter.mp4": (["-filter_complex", "[0:a]atrim=0:3.5[a]", "-map", "0:v", "-map", "[a]", *x264,
                             "-c:a", "aac"], 87),
  }
  for name, (opts, _) in made.items():
    ffmpeg("-i", str(src), *opts, str(folder / name))
  out = tmp_path / "data"
  report = preprocess.Preprocessor(preprocess.Settings(videos=str(folder), out=str(out), renderer="random:tiny",
                                                       workers=0, batch_size=32, progress=False)).run()
  assert report["accepted"] == len(made) and report["rejected"] == 0
  with open(os.path.join(builder.version_dir(out), "clips.json")) as f:
    clips = json.load(f)
  frames = {c["clip_id"].split("#")[0]: c["num_frames"] for split in clips.values() for c in split}
  for name, (_, expected) in made.items():
    assert abs(frames[name] - expected) <= 2, (name, frames[name])
