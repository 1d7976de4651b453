"""Test videos for the preprocessing pipeline, written with imageio-ffmpeg's bundled ffmpeg (no downloads).

`talking_face` writes skimage's astronaut, head and shoulders on a textured background, drifting slowly (a few %
of the frame) and breathing in scale, with a speech-like audio track and short loud clicks at chosen times (so a
test can check audio/video alignment). The container and codecs follow the extension:

  .mp4  H.264 + AAC 44.1 kHz     .mov  H.264 + AAC 48 kHz     .mkv  VP9 + Vorbis 44.1 kHz
  .webm VP8 + Opus 48 kHz        .avi  MPEG-4 part 2 + PCM 16 kHz

`rotation` stores the frames turned so that a player, applying the display rotation, shows them upright (a
phone video); `vfr` gives frames irregular real timestamps. The broken inputs (truncated, empty, text, no audio,
too short, no face, two faces, still image) are one function each; `write_collection` writes a folder of all of
them with what the pipeline should make of each. Everything is deterministic from `seed`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence

import cv2
import imageio_ffmpeg
import numpy as np
from scipy import signal
from skimage import data as skimage_data

SIZE = (320, 240)           # default upright frame size (width, height)
FACE_FRACTION = 0.3         # Haar face box side / the frame's shorter side
ASTRONAUT_FACE = (177.0, 67.0, 93.0, 93.0)   # Haar box (x, y, w, h) of the 512x512 astronaut
SPEECH_PEAK = 0.3           # speech peak amplitude; clicks are three times louder
CLICK_PEAK = 0.9
CLICK_SECONDS = 0.004
FLASH_GAIN = 35             # brightness added to a flashed frame (of 255; below the shot-cut threshold)
VFR_SUBSTEPS = 5            # VFR frames sit on a grid of VFR_SUBSTEPS * fps steps per second (see _timeline)

_X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p"]
FORMATS = {  # extension: (video codec options, audio codec options, default audio sample rate)
    ".mp4": (_X264, ["-c:a", "aac", "-b:a", "96k"], 44100),
    ".mov": (_X264, ["-c:a", "aac", "-b:a", "96k"], 48000),
    ".mkv": (["-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "5", "-crf", "35", "-b:v", "0",
              "-pix_fmt", "yuv420p"], ["-c:a", "libvorbis", "-q:a", "3"], 44100),
    ".webm": (["-c:v", "libvpx", "-deadline", "good", "-cpu-used", "16", "-b:v", "400k",
               "-pix_fmt", "yuv420p"], ["-c:a", "libopus", "-b:a", "64k"], 48000),
    ".avi": (["-c:v", "mpeg4", "-q:v", "4", "-pix_fmt", "yuv420p"], ["-c:a", "pcm_s16le"], 16000),
}
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))


# ---------------------------------------------------------------------------------------------------- pictures

@functools.lru_cache(maxsize=1)
def _astronaut() -> tuple[np.ndarray, np.ndarray]:
  """(astronaut RGB float32 [512, 512, 3], soft head-and-shoulders mask [512, 512, 1])."""
  mask = np.zeros((512, 512), np.float32)
  cv2.ellipse(mask, (224, 150), (110, 150), 0, 0, 360, 1.0, -1)
  mask = cv2.GaussianBlur(mask, (0, 0), 8)
  return skimage_data.astronaut().astype(np.float32), mask[..., None]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A smooth random colour texture with faint diagonal stripes, float32 [H, W, 3] in 0..255."""
  coarse = rng.uniform(60, 200, (4, 5, 3)).astype(np.float32)
  texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
  y, x = np.mgrid[0:height, 0:width]
  stripes = 8.0 * np.sin(2 * np.pi * (x + y) / 24.0)[..., None]
  return np.clip(texture + stripes, 0, 255).astype(np.float32)


def _paste_faces(frame: np.ndarray, faces: Sequence[tuple[float, float, float]]) -> np.ndarray:
  """`frame` with an astronaut per (face centre x, face centre y, face side) blended in; uint8."""
  image, mask = _astronaut()
  height, width = frame.shape[:2]
  fx, fy, fw, _ = ASTRONAUT_FACE
  out = frame
  for cx, cy, side in faces:
    s = side / fw
    m = np.float32([[s, 0, cx - s * (fx + fw / 2)], [0, s, cy - s * (fy + fw / 2)]])
    face = cv2.warpAffine(image, m, (width, height))
    alpha = cv2.warpAffine(mask, m, (width, height))[..., None]
    out = out * (1 - alpha) + face * alpha
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _drift(rng: np.random.Generator) -> Callable[[float], tuple[float, float, float]]:
  """A smooth motion t -> (dx, dy, ds): translation in frame fractions (<= 3 %), relative scale change (<= 4 %)."""
  periods = rng.uniform(3.0, 6.0, 3)
  phases = rng.uniform(0, 2 * np.pi, 3)
  amps = np.array([0.03, 0.02, 0.04])
  return lambda t: tuple(amps * np.sin(2 * np.pi * t / periods + phases))


def _face_scene(width: int, height: int, seed: int, centres: Sequence[float] = (0.5,)
                ) -> Callable[[float], np.ndarray]:
  """t -> upright frame: one astronaut per horizontal centre (fraction of the width), each drifting on its own."""
  rng = np.random.default_rng([seed, 1])
  background = _background(rng, width, height)
  drifts = [_drift(rng) for _ in centres]
  side = FACE_FRACTION * min(width, height)

  def render(t: float) -> np.ndarray:
    faces = []
    for centre, drift in zip(centres, drifts):
      dx, dy, ds = drift(t)
      faces.append(((centre + dx) * width, (0.45 + dy) * height, side * (1 + ds)))
    return _paste_faces(background, faces)
  return render


def _shapes_scene(width: int, height: int, seed: int) -> Callable[[float], np.ndarray]:
  """t -> frame of coloured discs and boxes gliding over a textured background: no face anywhere."""
  rng = np.random.default_rng([seed, 2])
  background = _background(rng, width, height)
  shapes = [(rng.uniform(0.2, 0.8, 2), rng.uniform(-0.1, 0.1, 2), rng.uniform(0.06, 0.15),
             tuple(float(c) for c in rng.uniform(0, 255, 3)), k % 2) for k in range(6)]

  def render(t: float) -> np.ndarray:
    frame = background.copy()
    for start, velocity, radius, colour, box in shapes:
      x, y = (np.abs((start + velocity * t) % 2.0 - 1.0) * [width, height]).astype(int)  # bounce off the edges
      r = int(radius * min(width, height))
      if box:
        cv2.rectangle(frame, (x - r, y - r), (x + r, y + r), colour, -1)
      else:
        cv2.circle(frame, (x, y), r, colour, -1)
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)
  return render


# ------------------------------------------------------------------------------------------------------- sound

def _resonate(x: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
  """x through a two-pole resonator at `freq` Hz (unit gain at the peak)."""
  r = np.exp(-np.pi * bandwidth / rate)
  theta = 2 * np.pi * freq / rate
  a = [1.0, -2 * r * np.cos(theta), r * r]
  gain = (1 - r) * np.sqrt(1 - 2 * r * np.cos(2 * theta) + r * r)
  return signal.lfilter([gain], a, x)


def tone_bursts(seconds: float, rate: int, freq: float = 180.0, bursts: float = 3.0) -> np.ndarray:
  """float32 [int(seconds * rate)]: a `freq` Hz tone of peak SPEECH_PEAK, on for the first half of each 1/`bursts`
  second. Its loudness rises and falls like syllables, the rule the tiny test models learn their mouths from."""
  t = np.arange(int(seconds * rate)) / rate
  return (SPEECH_PEAK * np.sin(2 * np.pi * freq * t) * (np.sin(2 * np.pi * bursts * t) > 0)).astype(np.float32)


def write_photos(folder: str | os.PathLike, ext: str = ".png") -> None:
  """skimage's astronaut (a person) as portrait{ext} and its cat (no human face) as cat{ext} in `folder`."""
  for name, image in (("portrait", skimage_data.astronaut()), ("cat", skimage_data.chelsea())):
    cv2.imwrite(os.path.join(folder, name + ext), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def speech(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
  """Speech-like float32 audio [round(seconds * rate)] with peak SPEECH_PEAK: a glottal pulse train at a wandering
  pitch through the formants of one vowel per syllable, syllables of 0.12-0.3 s in phrases with pauses between."""
  rng = np.random.default_rng([seed, 3])
  n = int(round(seconds * rate))
  knots = np.arange(0, seconds + 0.2, 0.1)
  f0 = rng.uniform(100, 220) * np.exp(0.12 * np.interp(np.arange(n) / rate, knots, rng.standard_normal(len(knots))))
  pulses = np.diff(np.floor(np.cumsum(f0 / rate)), prepend=0.0)
  source = signal.lfilter([1.0], [1.0, -0.97], signal.lfilter([1.0], [1.0, -0.97], pulses))  # glottal roll-off
  source = np.diff(source, prepend=0.0)  # lip radiation
  envelopes = np.zeros((len(VOWELS), n))
  pos = int(rng.uniform(0.05, 0.2) * rate)
  while pos < n:
    phrase_end = min(n, pos + int(rng.uniform(0.8, 2.0) * rate))
    while pos < phrase_end:
      size = min(int(rng.uniform(0.12, 0.3) * rate), n - pos)
      envelopes[rng.integers(len(VOWELS)), pos:pos + size] += rng.uniform(0.5, 1.0) * np.sin(
          np.linspace(0, np.pi, size)) ** 2
      pos += size + int(rng.uniform(0.0, 0.05) * rate)
    pos = phrase_end + int(rng.uniform(0.15, 0.4) * rate)
  wave = np.zeros(n)
  for formants, envelope in zip(VOWELS, envelopes):
    if envelope.any():
      voiced = sum(_resonate(source, f, 60 + 0.06 * f, rate) / (k + 1) for k, f in enumerate(formants))
      wave += envelope * voiced
  wave += 0.003 * np.max(np.abs(wave)) * rng.standard_normal(n)  # breath noise floor
  return (SPEECH_PEAK * wave / np.max(np.abs(wave))).astype(np.float32)


def add_clicks(wave: np.ndarray, rate: int, clicks: Sequence[float]) -> np.ndarray:
  """`wave` with a CLICK_SECONDS burst of a 2 kHz tone, peak CLICK_PEAK, centred at each time (s) in `clicks`."""
  out = wave.copy()
  half = int(CLICK_SECONDS * rate / 2)
  t = np.arange(-half, half + 1) / rate
  burst = CLICK_PEAK * np.hanning(len(t)) * np.cos(2 * np.pi * 2000 * t)
  for time in clicks:
    centre = int(round(time * rate))
    if not half <= centre < len(wave) - half:
      raise ValueError(f"click at {time} s is outside the audio (0..{len(wave) / rate:.3f} s)")
    out[centre - half:centre + half + 1] += burst
  return np.clip(out, -1, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ writing

def _ffmpeg(args: Sequence[str], frames: Iterable[np.ndarray] | None = None) -> None:
  """Runs the bundled ffmpeg, streaming `frames` (raw bytes) to its stdin; RuntimeError with its log if it fails."""
  with tempfile.TemporaryFile() as log:
    proc = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args],
                            stdin=subprocess.DEVNULL if frames is None else subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=log)
    if frames is not None:
      with contextlib.suppress(BrokenPipeError):  # ffmpeg stopped early: its log says why
        for frame in frames:
          proc.stdin.write(np.ascontiguousarray(frame).data)
      with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    if proc.wait() != 0:
      log.seek(0)
      raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {log.read().decode(errors='replace')[-800:]}")


def _format(path: str) -> tuple[list[str], list[str], int]:
  """(video codec options, audio codec options, default audio rate) for the path's extension."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise ValueError(f"{path}: the extension must be one of {sorted(FORMATS)}")
  return FORMATS[ext]


def _timeline(seconds: float, fps: float, vfr: bool, seed: int) -> tuple[np.ndarray, float, float, list[str]]:
  """(frame times (s), true duration (s), input frame rate, ffmpeg output options that set the timestamps).

  VFR frames sit on a grid of VFR_SUBSTEPS * fps steps per second, frame n on step 5 n + j(n), j(n) in 0..4
  pseudo-random from the seed (1 to 9 steps apart, 5 on average); ffmpeg's setpts gets the same integer formula.
  The last frame goes on the grid's last step, so that the video ends at `duration`."""
  if not vfr:
    count = int(round(seconds * fps))
    return np.arange(count) / fps, count / fps, fps, []
  rate = VFR_SUBSTEPS * fps
  grid = int(round(seconds * rate))
  a, b = (int(v) for v in np.random.default_rng([seed, 4]).integers(1, 96, 2))
  n = np.arange(grid // VFR_SUBSTEPS + 1)
  steps = VFR_SUBSTEPS * n + (a * n * n + b * n) % 97 // 20
  steps = np.append(steps[steps < grid - 1], grid - 1)
  pts = f"if(eq(N,{len(steps) - 1}),{grid - 1},{VFR_SUBSTEPS}*N+floor(mod({a}*N*N+{b}*N,97)/20))"
  return steps / rate, grid / rate, rate, ["-vf", f"setpts='{pts}'", "-fps_mode", "passthrough"]


def _scene_video(path: str | os.PathLike, scene: Callable[[float], np.ndarray], seconds: float, *, fps: float,
                 size: tuple[int, int], rotation: int | None = None, vfr: bool = False,
                 clicks: Sequence[float] = (), flashes: Sequence[float] = (), audio: bool = True,
                 sample_rate: int | None = None, seed: int = 0) -> dict:
  """Renders upright frames `scene(t)`, stores them turned for `rotation`, and encodes them with speech (plus
  clicks) in the extension's codecs; returns what talking_face documents."""
  path = os.fspath(path)
  video_args, audio_args, default_rate = _format(path)
  width, height = size
  if width % 2 or height % 2:
    raise ValueError(f"frame size {size} must be even (yuv420p)")
  if rotation not in (None, 0, 90, 180, 270) or (rotation and path.lower().endswith(".avi")):
    raise ValueError(f"rotation {rotation} is not one of None, 90, 180, 270 (and AVI cannot store one)")
  if vfr and path.lower().endswith(".avi"):
    raise ValueError("AVI cannot store a variable frame rate")
  if clicks and not audio:
    raise ValueError("clicks need an audio track")
  rate = sample_rate or default_rate
  times, duration, input_rate, timestamps = _timeline(seconds, fps, vfr, seed)
  ends = np.append(times[1:], duration)
  flashing = [any(a <= f < b for f in flashes) for a, b in zip(times, ends)]
  frame = lambda k: (np.minimum(scene(times[k]).astype(np.int16) + FLASH_GAIN, 255).astype(np.uint8)
                     if flashing[k] else scene(times[k]))
  wave = add_clicks(speech(duration, rate, seed), rate, clicks) if audio else None
  turns = -(rotation or 0) // 90  # a player turns the stored frames `rotation` degrees counter-clockwise
  stored_w, stored_h = size[::-1] if turns % 2 else size
  video_in = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{stored_w}x{stored_h}", "-framerate", f"{input_rate:g}"]
  if rotation:
    video_in = ["-noautorotate", "-display_rotation", str(rotation), *video_in]
  with tempfile.TemporaryDirectory(prefix="videos-") as tmp:
    audio_in, maps = [], ["-map", "0:v"]
    if audio:
      raw = os.path.join(tmp, "audio.f32")
      wave.astype("<f4").tofile(raw)
      audio_in = ["-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", raw]
      maps += ["-map", "1:a", *audio_args]
    _ffmpeg([*video_in, "-i", "pipe:0", *audio_in, *maps, *timestamps, *video_args, "-fflags", "+bitexact", path],
            (np.rot90(frame(k), turns) for k in range(len(times))))
  return dict(path=path, duration=duration, num_frames=len(times), size=(width, height), fps=fps,
              rotation=rotation or 0, vfr=vfr, has_audio=audio, clicks=tuple(clicks), flashes=tuple(flashes),
              sample_rate=rate if audio else None)


def talking_face(path: str | os.PathLike, seconds: float, *, fps: float = 25, size: tuple[int, int] = SIZE,
                 rotation: int | None = None, vfr: bool = False, clicks: Sequence[float] = (),
                 flashes: Sequence[float] = (), audio: bool = True, sample_rate: int | None = None,
                 seed: int = 0) -> dict:
  """Writes the astronaut talking: about `seconds` long at `fps` (the mean rate when `vfr`), `size` = upright
  (width, height), codecs from the extension (FORMATS), display `rotation` (degrees a player turns the stored
  frames counter-clockwise, ffmpeg's -display_rotation; a phone held upright usually stores 270, which ffprobe
  shows as -90), audio at `sample_rate` (default: the container's) with a click at each time (s) in `clicks`;
  the frame shown at each time in `flashes` is brightened by FLASH_GAIN (to find it again after decoding).

  Returns dict(path, duration (s, video and audio, `seconds` rounded to whole frames), num_frames (stored),
  size (upright), fps, rotation, vfr, has_audio, clicks, sample_rate)."""
  return _scene_video(path, _face_scene(*size, seed), seconds, fps=fps, size=size, rotation=rotation, vfr=vfr,
                      clicks=clicks, flashes=flashes, audio=audio, sample_rate=sample_rate, seed=seed)


# ----------------------------------------------------------------------------------------------- broken inputs

def truncated(path: str | os.PathLike, *, faststart: bool = True, seed: int = 0) -> dict:
  """A 4 s talking-face mp4 cut to half its bytes. With `faststart` the index (moov) comes first, so ffmpeg
  opens the file, believes it is 4 s long, and decodes only about the first half; without it the index is lost
  and the file cannot be opened at all."""
  path = os.fspath(path)
  info = talking_face(path, 4.0, seed=seed)
  if faststart:
    moved = path + ".faststart.mp4"
    _ffmpeg(["-i", path, "-c", "copy", "-movflags", "+faststart", moved])
    os.replace(moved, path)
  os.truncate(path, os.path.getsize(path) // 2)
  return dict(path=path, full_duration=info["duration"], faststart=faststart)


def empty(path: str | os.PathLike) -> dict:
  """A zero-byte file."""
  open(path, "wb").close()
  return dict(path=os.fspath(path))


def not_video(path: str | os.PathLike) -> dict:
  """A text file (named like a video)."""
  with open(path, "w") as f:
    f.write("These are my notes, not a video.\n" * 20)
  return dict(path=os.fspath(path))


def no_audio(path: str | os.PathLike, seconds: float = 4.0, seed: int = 0) -> dict:
  """A good talking-face video without an audio track."""
  return talking_face(path, seconds, audio=False, seed=seed)


def too_short(path: str | os.PathLike, seconds: float = 2.0, seed: int = 0) -> dict:
  """A talking-face video with audio, shorter than the 3 s a clip needs."""
  return talking_face(path, seconds, seed=seed)


def no_face(path: str | os.PathLike, seconds: float = 4.0, size: tuple[int, int] = SIZE, seed: int = 0) -> dict:
  """Moving discs and boxes, no face, with speech audio."""
  return _scene_video(path, _shapes_scene(*size, seed), seconds, fps=25, size=size, seed=seed)


def two_faces(path: str | os.PathLike, seconds: float = 4.0, size: tuple[int, int] = SIZE, seed: int = 0) -> dict:
  """Two astronauts side by side (centred at 27 % and 73 % of the width), the same size, with speech audio."""
  return _scene_video(path, _face_scene(*size, seed, centres=(0.27, 0.73)), seconds, fps=25, size=size, seed=seed)


def still_image(path: str | os.PathLike, size: tuple[int, int] = SIZE, seed: int = 0) -> dict:
  """A JPEG of the talking-face scene's first frame (a face, one frame, no audio) under the given name."""
  frame = _face_scene(*size, seed)(0.0)
  jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
  with open(path, "wb") as f:
    f.write(jpeg.tobytes())
  return dict(path=os.fspath(path), size=size)


# -------------------------------------------------------------------------------------------------- collection

GOOD = {  # name: talking_face arguments
    "talk_25fps.mp4": dict(seconds=5.0, clicks=(0.6, 2.48, 4.2)),
    "talk_30fps_rot90.mov": dict(seconds=4.0, fps=30, size=(240, 320), rotation=90, clicks=(1.0, 3.5)),
    "talk_24vfr.mp4": dict(seconds=5.0, fps=24, vfr=True, clicks=(0.5, 2.0, 4.6)),
    "talk_30vfr_rot270.mp4": dict(seconds=4.0, fps=30, size=(240, 320), rotation=270, vfr=True, clicks=(1.3,)),
    "talk_25fps_rot180.mkv": dict(seconds=4.0, rotation=180, clicks=(0.8, 3.7)),
    "talk_30fps.webm": dict(seconds=4.0, fps=30, size=(256, 192), clicks=(2.2,)),
    "talk_24fps.avi": dict(seconds=6.0, fps=24, clicks=(0.3, 4.0, 5.9)),
}
BROKEN = {  # name: (writer, expected rejection)
    "truncated.mp4": (truncated, "truncated"),
    "truncated_no_index.mp4": (functools.partial(truncated, faststart=False), "truncated"),
    "empty.mp4": (empty, "empty"),
    "notes.mp4": (not_video, "not_video"),
    "no_audio.mp4": (no_audio, "no_audio"),
    "short_2s.mp4": (too_short, "too_short"),
    "no_face.mp4": (no_face, "no_face"),
    "two_faces.mp4": (two_faces, "two_faces"),
    "still_image.mp4": (still_image, "still_image"),
}


def write_collection(folder: str | os.PathLike) -> dict[str, dict]:
  """Writes every GOOD and BROKEN video into `folder`; returns name -> the writer's dict plus `reject`: None for a
  good video (keep it, `duration` s long), else the rejection kind ("truncated", "empty", "not_video",
  "no_audio", "too_short", "no_face", "two_faces", "still_image")."""
  os.makedirs(folder, exist_ok=True)
  out = {}
  for k, (name, kwargs) in enumerate(GOOD.items()):
    out[name] = dict(talking_face(os.path.join(folder, name), seed=k, **kwargs), reject=None)
  for name, (writer, kind) in BROKEN.items():
    out[name] = dict(writer(os.path.join(folder, name)), reject=kind)
  return out


def write_benchmark_set(folder: str | os.PathLike, count: int, seconds: float, size: tuple[int, int],
                        workers: int = 1) -> None:
  """`count` talking-face videos of `seconds` at `size` (H.264 + AAC; a third at 30 fps, the rest at 25) for
  timing the preprocessing pipeline, written by `workers` processes."""
  import concurrent.futures
  os.makedirs(folder, exist_ok=True)
  jobs = [(os.path.join(folder, f"speaker{k % 8:02d}", f"talk{k:03d}.mp4"), k) for k in range(count)]
  for path, _ in jobs:
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with concurrent.futures.ProcessPoolExecutor(max(1, workers)) as pool:
    list(pool.map(functools.partial(_benchmark_video, seconds=seconds, size=size), *zip(*jobs)))


def _benchmark_video(path: str, seed: int, seconds: float, size: tuple[int, int]) -> None:
  talking_face(path, seconds, fps=30 if seed % 3 == 0 else 25, size=size, seed=seed)


if __name__ == "__main__":
  import argparse
  parser = argparse.ArgumentParser(description="Write talking-face test videos for timing preprocessing.")
  parser.add_argument("folder")
  parser.add_argument("--count", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=20.0)
  parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  a = parser.parse_args()
  width, height = (int(v) for v in a.size.split("x"))
  write_benchmark_set(a.folder, a.count, a.seconds, (width, height), a.workers)
