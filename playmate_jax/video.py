"""Video files through imageio-ffmpeg's bundled ffmpeg: probing, streaming RGB frames, audio, H.264 writing.

Every decode runs ffmpeg in a subprocess and streams raw frames, so memory stays flat for any length. ffmpeg
applies a file's rotation metadata while decoding (its default autorotate), so frames come out upright and
`probe` reports the upright size. A file ffmpeg cannot read is a `UserError` naming it.

Writing: `VideoWriter` streams frames to an H.264 (yuv420p) mp4 and, when given audio (a file with an audio
track or a waveform), muxes it in at close with AAC, cut to the video's length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator

import imageio_ffmpeg
import numpy as np

from playmate_jax.errors import UserError

AUDIO_RATE = 16000


class _RotationNotice(logging.Filter):
  """imageio-ffmpeg warns when the decoded size differs from the stored one: that is ffmpeg's autorotation of
  a rotated (e.g. phone) video, which is what we want, so the warning is dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("The frame size for reading")


logging.getLogger("imageio_ffmpeg").addFilter(_RotationNotice())


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What `probe` finds: frame rate, duration (s), an estimate of the frame count, upright size, audio, and the
  video codec (e.g. 'h264'; an image codec such as 'mjpeg' or 'png' with duration 0 is a still image)."""
  fps: float
  duration: float
  num_frames: int  # round(duration * fps); count exactly with `count_frames`
  width: int
  height: int
  has_audio: bool
  codec: str = ""

  @property
  def is_still_image(self) -> bool:
    """A single picture (e.g. a JPEG or PNG file renamed .mp4), which ffmpeg reads as a one-frame video."""
    return self.duration <= 0 and self.codec.rstrip(",") in STILL_IMAGE_CODECS


STILL_IMAGE_CODECS = ("mjpeg", "png", "bmp", "tiff", "webp", "gif", "jpeg2000", "jpegls", "qoi")


def _ffmpeg() -> str:
  return imageio_ffmpeg.get_ffmpeg_exe()


@contextlib.contextmanager
def _spawning():
  """Silences JAX's at-fork warning while ffmpeg starts: the child execs ffmpeg at once and never runs
  Python or JAX, which is what that warning (a forked copy of a multithreaded process) is about."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    yield


def _check_file(path: str) -> None:
  if not os.path.isfile(path):
    raise UserError(f"Video file {path} does not exist; check the path.")
  if os.path.getsize(path) == 0:
    raise UserError(f"Video file {path} is empty (0 bytes); give a video file (mp4, mov, avi, ...).")


def _starts_like_mp4(path: str) -> bool:
  """Whether the file begins with an ISO media 'ftyp' box (an mp4/mov, perhaps cut off), not just any bytes."""
  with open(path, "rb") as f:
    return f.read(8)[4:8] == b"ftyp"


class TruncatedVideo(UserError):
  """A video file that was cut off: its index is missing, or decoding stops part-way."""


def _unreadable(path: str, error: Exception | None = None) -> UserError:
  if error is not None and "moov atom not found" in str(error) and _starts_like_mp4(path):
    return TruncatedVideo(f"Video file {path} is incomplete (its index, the mp4 'moov' atom, is missing: the "
                          "download or copy was cut off); download or copy it again.")
  return UserError(f"Video file {path} could not be read by ffmpeg (not a video, or damaged); "
                   "re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or give another file.")


def _open(path: str, output_params: list[str] | None = None, input_params: list[str] | None = None):
  """(meta, frame-bytes generator) of imageio_ffmpeg.read_frames, or UserError if ffmpeg cannot read the file."""
  _check_file(path)
  gen = imageio_ffmpeg.read_frames(path, output_params=output_params, input_params=input_params)
  try:
    with _spawning():
      meta = next(gen)
  except (OSError, RuntimeError, IndexError, ValueError, AttributeError, StopIteration) as e:
    gen.close()
    raise _unreadable(path, e) from None
  if not meta.get("size") or min(meta["size"]) <= 0:
    gen.close()
    raise _unreadable(path)
  return meta, gen


def _info(meta: dict, upright: tuple[int, int]) -> VideoInfo:
  fps, duration = float(meta.get("fps") or 0.0), float(meta.get("duration") or 0.0)
  return VideoInfo(fps=fps, duration=duration, num_frames=int(round(duration * fps)), width=int(upright[0]),
                   height=int(upright[1]), has_audio="audio_codec" in meta, codec=str(meta.get("codec", "")))


def probe(path: str | os.PathLike) -> VideoInfo:
  """Frame rate, duration, estimated frame count, upright frame size and whether there is an audio track."""
  path = os.fspath(path)
  meta, gen = _open(path)
  gen.close()
  return _info(meta, meta["size"])


def count_frames(path: str | os.PathLike) -> int:
  """The exact number of frames (decodes the whole file)."""
  path = os.fspath(path)
  _check_file(path)
  try:
    with _spawning():
      return int(imageio_ffmpeg.count_frames_and_secs(path)[0])
  except (OSError, RuntimeError, ValueError) as e:
    raise _unreadable(path) from e


def stream(path: str | os.PathLike, fps: float | None = None, max_side: int | None = None,
           region: tuple[int, int, int, int] | None = None,
           threads: int | None = None) -> tuple[VideoInfo, Iterator[np.ndarray]]:
  """(what `probe` says, the frames `read_frames` yields) from one ffmpeg process: no second process to probe.

  `region` (x, y, width, height, even, in upright pixels) keeps only that part of each frame (before
  `max_side`; the info's size is then the region's); `threads` caps ffmpeg's decoding threads (1 when many
  decoders run side by side)."""
  path = os.fspath(path)
  filters = [f"fps={fps:g}"] if fps else []
  if region:
    x, y, w, h = (int(v) for v in region)
    filters.append(f"crop={w}:{h}:{x}:{y}")
  if max_side:
    m = int(max_side)
    filters.append(f"scale=w='if(gte(iw,ih),min(iw,{m}),-2)':h='if(gte(iw,ih),-2,min(ih,{m}))'")
  meta, gen = _open(path, ["-vf", ",".join(filters)] if filters else None,
                    ["-threads", str(int(threads))] if threads else None)
  width, height = meta["size"]
  source = tuple(meta.get("source_size") or meta["size"])
  # imageio-ffmpeg reports the stored size; a rotated video comes out turned (portrait vs landscape).
  upright = source if (width >= height) == (source[0] >= source[1]) else source[::-1]
  return _info(meta, region[2:] if region else upright), _frames(path, gen, width, height)


def _frames(path: str, gen, width: int, height: int) -> Iterator[np.ndarray]:
  i = 0
  try:
    for i, buf in enumerate(gen):
      yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
  except RuntimeError:
    raise TruncatedVideo(f"Video file {path} could not be decoded past frame {i}; it is damaged or truncated. "
                         "Re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) and try again.") from None
  finally:
    gen.close()


def read_frames(path: str | os.PathLike, fps: float | None = None,
                max_side: int | None = None) -> Iterator[np.ndarray]:
  """RGB uint8 frames [H, W, 3] of the video, one at a time; with `fps`, resampled to that constant rate by
  timestamps (frames dropped or repeated by ffmpeg's fps filter, so variable frame rates come out even); with
  `max_side`, shrunk by ffmpeg so that the longer side is at most that (even sizes, aspect kept)."""
  yield from stream(path, fps, max_side)[1]


def extract_audio(path: str | os.PathLike, sample_rate: int = AUDIO_RATE,
                  info: VideoInfo | None = None) -> np.ndarray | None:
  """The file's first audio track as mono float32 at `sample_rate`, or None when it has no audio track
  (`info`, the file's `probe`, saves probing it again)."""
  path = os.fspath(path)
  if not (info or probe(path)).has_audio:
    return None
  cmd = [_ffmpeg(), "-v", "error", "-i", path, "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate),
         "-f", "f32le", "-"]
  with _spawning():
    proc = subprocess.run(cmd, capture_output=True)
  if proc.returncode != 0:
    raise UserError(f"The audio track of {path} could not be decoded; re-encode the file and try again.")
  return np.frombuffer(proc.stdout, np.float32).copy()


class VideoWriter:
  """Streams RGB uint8 frames to an H.264 mp4 (yuv420p), optionally with audio muxed in at close.

    with VideoWriter("out.mp4", fps=25, audio="driving.mp4") as w:
      for frame in frames:
        w.write(frame)

  `audio` is a file whose first audio track is used (any container ffmpeg reads) or a mono float waveform
  at `audio_rate`; it is cut to the video's length. The frame size is fixed by the first frame; odd sizes are
  padded by one edge row/column (yuv420p needs even sizes). The output appears only when the writer closes
  without an error; a failed run leaves no partial file behind.
  """

  def __init__(self, path: str | os.PathLike, fps: float = 25, audio: str | os.PathLike | np.ndarray | None = None,
               audio_rate: int = AUDIO_RATE, crf: int = 18, preset: str = "veryfast"):
    self.path = os.fspath(path)
    self.fps, self.audio, self.audio_rate, self.crf = float(fps), audio, int(audio_rate), int(crf)
    self.preset = preset  # x264's speed/size trade-off (its default is "medium", slower)
    self.num_frames = 0
    self._gen = None
    self._size = None  # (height, width) of the frames given
    directory = os.path.dirname(os.path.abspath(self.path))
    if not os.path.isdir(directory):
      raise UserError(f"Output folder {directory} does not exist; create it or choose another --out path.")
    fd, self._video_tmp = tempfile.mkstemp(suffix=".mp4", prefix=".video-", dir=directory)
    os.close(fd)

  @property
  def size(self) -> tuple[int, int] | None:
    """(height, width) of the frames given (None before the first frame)."""
    return self._size

  def __enter__(self) -> "VideoWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  def write(self, frame: np.ndarray) -> None:
    """One RGB frame [H, W, 3], uint8 (or float in [0, 1])."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
      frame = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if frame.ndim != 3 or frame.shape[-1] != 3:
      raise ValueError(f"VideoWriter.write wants an RGB frame [H, W, 3], got shape {frame.shape}")
    if self._gen is None:
      self._start(frame.shape[:2])
    elif frame.shape[:2] != self._size:
      raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame's {self._size}")
    h, w = self._size
    if h % 2 or w % 2:
      frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    self._gen.send(np.ascontiguousarray(frame))
    self.num_frames += 1

  def write_batch(self, frames: np.ndarray) -> None:
    for frame in frames:
      self.write(frame)

  def _start(self, size: tuple[int, int]) -> None:
    self._size = tuple(size)
    h, w = self._size
    self._gen = imageio_ffmpeg.write_frames(
        self._video_tmp, (w + w % 2, h + h % 2), fps=self.fps, codec="libx264", quality=None,
        macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", str(self.crf), "-preset", self.preset])
    with _spawning():
      self._gen.send(None)

  def close(self) -> None:
    """Finish the video and mux the audio; the output file appears now."""
    if self._gen is None:
      self.abort()
      raise UserError(f"No frames were written to {self.path}; nothing to save.")
    self._gen.close()
    self._gen = None
    try:
      if self.audio is None:
        os.replace(self._video_tmp, self.path)
      else:
        self._mux()
    finally:
      self._remove(self._video_tmp)

  def abort(self) -> None:
    """Stop without writing the output."""
    if self._gen is not None:
      try:
        self._gen.close()
      except Exception:  # ffmpeg may already have failed; the temp file goes either way
        pass
      self._gen = None
    self._remove(self._video_tmp)

  def _mux(self) -> None:
    wav_tmp = None
    audio = self.audio
    if isinstance(audio, np.ndarray):
      import soundfile  # only needed to hand a waveform to ffmpeg
      fd, wav_tmp = tempfile.mkstemp(suffix=".wav", prefix=".audio-", dir=os.path.dirname(self._video_tmp))
      os.close(fd)
      soundfile.write(wav_tmp, np.asarray(audio, np.float32).reshape(-1), self.audio_rate)
      audio = wav_tmp
    out_tmp = self._video_tmp[:-4] + ".mux.mp4"
    duration = self.num_frames / self.fps
    cmd = [_ffmpeg(), "-y", "-v", "error", "-i", self._video_tmp, "-i", os.fspath(audio), "-map", "0:v:0",
           "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-t", f"{duration:.6f}",
           "-movflags", "+faststart", out_tmp]
    try:
      with _spawning():
        proc = subprocess.run(cmd, capture_output=True, text=True)
      if proc.returncode != 0:
        source = "the waveform" if wav_tmp else os.fspath(audio)
        raise UserError(f"The audio of {source} could not be muxed into {self.path}; "
                        "give a file that has a readable audio track.")
      os.replace(out_tmp, self.path)
    finally:
      self._remove(out_tmp)
      if wav_tmp:
        self._remove(wav_tmp)

  @staticmethod
  def _remove(path: str) -> None:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
