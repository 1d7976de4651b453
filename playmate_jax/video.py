"""Video files through imageio-ffmpeg's bundled ffmpeg: probing, streaming RGB frames, audio, H.264 writing.

Every decode runs ffmpeg in a subprocess and streams raw frames, so memory stays flat for any length. ffmpeg
applies a file's rotation metadata while decoding (its default autorotate), so frames come out upright and
`probe` reports the upright size. A file ffmpeg cannot read is a `UserError` naming it.

Writing: `VideoWriter` streams frames to an H.264 (yuv420p) mp4 and, when given audio (a file with an audio
track or a waveform), adds it as AAC cut to the video's length: in the same ffmpeg pass when the frame count is
known up front, else in a second pass at close.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import logging
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator

import imageio_ffmpeg
import numpy as np

from playmate_jax import cli
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
  return read_audio(path, sample_rate)


def read_audio(path: str | os.PathLike, sample_rate: int = AUDIO_RATE) -> np.ndarray:
  """The first audio track of any file ffmpeg reads (audio or video container), mono float32 at sample_rate;
  UserError naming the file when it has no audio track or ffmpeg cannot decode it."""
  path = os.fspath(path)
  cmd = [_ffmpeg(), "-v", "error", "-nostdin", "-i", path, "-map", "0:a:0", "-vn", "-ac", "1", "-ar",
         str(sample_rate), "-f", "f32le", "-"]
  with _spawning():
    proc = subprocess.run(cmd, capture_output=True)
  if proc.returncode != 0:
    said = proc.stderr.decode(errors="replace")
    if "matches no streams" in said:
      raise UserError(f"Audio file {path} has no audio track; give a file with speech (a WAV, an MP3 or a video "
                      "with sound).")
    raise UserError(f"Audio file {path} could not be decoded; re-encode it (e.g. to WAV) and try again.")
  return np.frombuffer(proc.stdout, np.float32).copy()


class VideoWriter:
  """Streams RGB uint8 frames to an H.264 mp4 (yuv420p) through one ffmpeg process, optionally with audio.

    with VideoWriter("out.mp4", fps=25, audio="speech.wav", num_frames=len(frames)) as w:
      for frame in frames:
        w.write(frame)

  `audio` is a file whose first audio track is used (any container ffmpeg reads) or a mono float waveform
  at `audio_rate`; it is cut to the video's length. With `num_frames` (how many frames will be written), ffmpeg
  encodes the audio beside the frames in the same pass; without it the audio is muxed in a second pass at close,
  which copies the whole video once more. The frame size is fixed by the first frame; odd sizes are padded by one
  edge row/column (yuv420p needs even sizes). The output appears only when the writer closes without an error; a
  failed run leaves no partial file behind, and an ffmpeg that fails is an error naming the file (never a
  silently broken video).

  `stream` (a path; with the audio in one pass, or no audio) makes the video playable while it is made: ffmpeg writes
  a fragmented MP4 there as it encodes, a key frame and a fragment every `fragment_frames` frames, with x264's
  zero-latency tuning so that frames leave the encoder as they arrive; a player (a browser's <video>) can read it as
  it grows. At close, the fragments are copied (no re-encoding) into the ordinary mp4 at `path`. The stream file is
  the caller's to remove.
  """

  def __init__(self, path: str | os.PathLike, fps: float = 25, audio: str | os.PathLike | np.ndarray | None = None,
               audio_rate: int = AUDIO_RATE, crf: int = 18, preset: str = "veryfast", num_frames: int | None = None,
               stream: str | os.PathLike | None = None, fragment_frames: int = 80):
    self.path = os.fspath(path)
    self.stream = None if stream is None else os.fspath(stream)
    self.fragment_frames = int(fragment_frames)
    self.fps, self.audio, self.audio_rate, self.crf = float(fps), audio, int(audio_rate), int(crf)
    self.preset = preset  # x264's speed/size trade-off (its default is "medium", slower)
    self.expected_frames = None if num_frames is None else int(num_frames)
    self.num_frames = 0
    self._proc = None     # the encoding ffmpeg, from the first frame on
    self._log = None      # its stderr, kept for the error message
    self._size = None     # (height, width) of the frames given
    self._wav_tmp = None  # a waveform `audio`, as the file ffmpeg reads
    directory = os.path.dirname(os.path.abspath(self.path))
    if not os.path.isdir(directory):
      raise UserError(f"Output folder {directory} does not exist; create it or choose another --out path.")
    fd, self._video_tmp = tempfile.mkstemp(suffix=".mp4", prefix=".video-", dir=directory)
    os.close(fd)
    if self.stream is not None and audio is not None and num_frames is None:
      raise ValueError("VideoWriter(stream=...) with audio needs num_frames (the audio goes in with the frames).")

  @property
  def size(self) -> tuple[int, int] | None:
    """(height, width) of the frames given (None before the first frame)."""
    return self._size

  @property
  def one_pass(self) -> bool:
    """Whether the audio is encoded beside the frames (audio given, and the frame count known up front)."""
    return self.audio is not None and self.expected_frames is not None

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
    if self._proc is None:
      self._start(frame.shape[:2])
    elif frame.shape[:2] != self._size:
      raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame's {self._size}")
    h, w = self._size
    if h % 2 or w % 2:
      frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    try:
      self._proc.stdin.write(np.ascontiguousarray(frame).data)
    except BrokenPipeError:  # ffmpeg has ended
      raise self._failed() from None
    self.num_frames += 1

  def write_batch(self, frames: np.ndarray) -> None:
    for frame in frames:
      self.write(frame)

  def _start(self, size: tuple[int, int]) -> None:
    self._size = tuple(size)
    h, w = self._size
    rate = fractions.Fraction(self.fps).limit_denominator()  # 30000/1001 stays exact
    cmd = [_ffmpeg(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w + w % 2}x{h + h % 2}",
           "-r", str(rate), "-i", "-"]
    if self.one_pass:
      cmd += ["-i", self._audio_file(), "-map", "0:v:0", "-map", "1:a:0",
              *self._audio_params(self.expected_frames)]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-preset", self.preset]
    if self.stream is None:
      cmd.append(self._video_tmp)
    else:
      f = str(self.fragment_frames)
      cmd += ["-tune", "zerolatency", "-g", f, "-keyint_min", f, "-sc_threshold", "0", "-flush_packets", "1",
              "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4", self.stream]
    self._log = tempfile.TemporaryFile()
    with _spawning():
      self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)

  def close(self) -> None:
    """Finish the video (and mux the audio, unless it went in with the frames); the output file appears now."""
    if self._proc is None:
      self.abort()
      raise UserError(f"No frames were written to {self.path}; nothing to save.")
    if self.expected_frames is not None and self.num_frames != self.expected_frames:
      self.abort()
      raise ValueError(f"VideoWriter was told {self.expected_frames} frames and was given {self.num_frames}; "
                       f"{self.path} was not written.")
    if self._end_ffmpeg() != 0:
      raise self._failed()
    self._proc = None
    try:
      if self.stream is not None:
        self._copy_stream()
      if self.audio is None or self.one_pass:
        cli.publish(self._video_tmp, self.path)
      else:
        self._mux()
    finally:
      self._cleanup()

  def abort(self) -> None:
    """Stop without writing the output."""
    if self._proc is not None:
      self._end_ffmpeg(kill=True)
      self._proc = None
    self._cleanup()

  def _end_ffmpeg(self, kill: bool = False) -> int:
    """Closes ffmpeg's input (the end of the frames), or kills it, and returns its exit status once it has ended."""
    if kill:
      self._proc.kill()
    try:
      self._proc.stdin.close()
    except BrokenPipeError:   # ffmpeg ended early; its exit status says how
      pass
    return self._proc.wait()

  def _failed(self) -> Exception:
    """The error for an ffmpeg that ended with an error (the writer is aborted): a UserError naming the audio when
    ffmpeg could not read it, else ffmpeg's own last words."""
    self._end_ffmpeg()
    self._log.seek(0)
    said = self._log.read().decode(errors="replace").strip()
    audio = self._audio_file() if self.one_pass else None
    self.abort()
    if audio is not None and audio in said:
      return self._audio_error()
    return RuntimeError(f"ffmpeg failed while writing {self.path}: {said[-1000:] or 'no message'}")

  def _cleanup(self) -> None:
    self._remove(self._video_tmp)
    if self._wav_tmp is not None:
      self._remove(self._wav_tmp)
      self._wav_tmp = None
    if self._log is not None:
      self._log.close()
      self._log = None

  def _audio_file(self) -> str:
    """The file ffmpeg reads the audio from: `audio` itself, or a waveform `audio` written to a temporary WAV."""
    if not isinstance(self.audio, np.ndarray):
      return os.fspath(self.audio)
    if self._wav_tmp is None:
      import soundfile  # only needed to hand a waveform to ffmpeg
      fd, self._wav_tmp = tempfile.mkstemp(suffix=".wav", prefix=".audio-", dir=os.path.dirname(self._video_tmp))
      os.close(fd)
      soundfile.write(self._wav_tmp, np.asarray(self.audio, np.float32).reshape(-1), self.audio_rate)
    return self._wav_tmp

  def _audio_params(self, num_frames: int) -> list[str]:
    """ffmpeg's output options for the audio track, cut to the length of `num_frames` frames."""
    params = ["-c:a", "aac", "-b:a", "192k", "-t", f"{num_frames / self.fps:.6f}"]
    return params if self.stream is not None else params + ["-movflags", "+faststart"]

  def _audio_error(self) -> UserError:
    source = "the waveform" if isinstance(self.audio, np.ndarray) else os.fspath(self.audio)
    return UserError(f"The audio of {source} could not be muxed into {self.path}; "
                     "give a file that has a readable audio track.")

  def _mux(self) -> None:
    out_tmp = self._video_tmp[:-4] + ".mux.mp4"
    cmd = [_ffmpeg(), "-y", "-v", "error", "-i", self._video_tmp, "-i", self._audio_file(), "-map", "0:v:0",
           "-map", "1:a:0", "-c:v", "copy", *self._audio_params(self.num_frames), out_tmp]
    try:
      with _spawning():
        proc = subprocess.run(cmd, capture_output=True, text=True)
      if proc.returncode != 0:
        raise self._audio_error()
      cli.publish(out_tmp, self.path)
    finally:
      self._remove(out_tmp)

  def _copy_stream(self) -> None:
    """The fragmented stream copied into the ordinary mp4 (moov first), as the temporary output."""
    cmd = [_ffmpeg(), "-y", "-v", "error", "-i", self.stream, "-c", "copy", "-movflags", "+faststart", "-f", "mp4",
           self._video_tmp]
    with _spawning():
      proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"ffmpeg failed while writing {self.path} from its stream {self.stream}: "
                         f"{proc.stderr.strip()[-1000:] or 'no message'}")

  @staticmethod
  def _remove(path: str) -> None:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
