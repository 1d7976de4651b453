"""Grain input pipelines over `playmate_clips`: training windows and evaluation clips.

Training (per process): this process's share of the clips (record i goes to process i % process_count),
shuffled anew each epoch, repeated forever; each read of a clip gives config.data.windows_per_clip random
windows of L frames, side by side in the batch, normalized; batched. Clips shorter than L frames are skipped (the
batch has no padding mask); `load_dataset_info` reports how many. Deterministic from config.data.shuffle_seed
for a given process_count; the iterator's get_state()/set_state() (JSON-serialisable dicts) resume exactly,
and grain.checkpoint.CheckpointSave/CheckpointRestore save it with Orbax.

The source (the identity condition's motion, and the previous motion before a clip's start) is one frame of the
clip: its pose always, and its expression too with config.data.source_expression = "clip" (stage 1's setting).
With "reference" (stage 2's) the expression is the speaker's reference expression from the dataset statistics
(a neutral one where labels exist), so that the source does not carry the clip's emotion, as a user's neutral
portrait does not carry the requested one. With probability config.data.start_prob a training window is treated
as a sequence start: its previous motion is the source repeated, as the sampler gives the first window.

The config is one that configlib.validate passed (its values are not checked again here); what is checked here is
the config against the dataset (it exists, has the config's audio encoder, split and clips of a window), facts only
known once the dataset is opened.
"""

from collections.abc import Sequence
import dataclasses
import functools
import json
import logging
import os
from typing import Any

from absl import flags
import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from playmate_jax.audio import get_encoder
from playmate_jax.data import builder, demo
from playmate_jax.data import stats as stats_lib
from playmate_jax.errors import UserError
from playmate_jax.motion import EXP_DIM, IDENTITY_DIM, MOTION_DIM


@dataclasses.dataclass(frozen=True)
class OpenedDataset:
  """A dataset checked against the config: its folder, metadata, statistics and clip index."""
  data_dir: str
  path: str
  metadata: dict
  stats: stats_lib.DatasetStats
  clips: dict[str, list[dict]]

  def source(self, split: str):
    """Random-access records of a split (tfds.data_source: numpy, no TensorFlow)."""
    return tfds.builder_from_directory(self.path).as_data_source(split=split)


def data_dir(config: ml_collections.ConfigDict) -> str:
  """The TFDS data_dir for config.data (generating the demo dataset if config.data.name == 'demo')."""
  if config.data.name == "demo":
    return demo.ensure_demo_dataset(config)
  # Checked here, not in configlib.validate: a config without a dataset is valid for what reads none (sampling
  # from a checkpoint, the train-step benchmark on random batches).
  if not config.data.data_dir:
    raise UserError("config.data.data_dir is empty; set it to the folder that the preprocessing pipeline wrote "
                    "(it holds playmate_clips/1.0.0), or use --config.data.name=demo.")
  return os.path.expanduser(config.data.data_dir)


def _read_json(path: str, what: str) -> Any:
  """A dataset's JSON file; UserError naming it (and the rewrite) if it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    state = "is missing" if isinstance(e, FileNotFoundError) else f"could not be read ({type(e).__name__})"
    fix = stats_lib.refresh(os.path.join(os.path.dirname(path), stats_lib.STATS_FILE))
    raise UserError(f"The {what} {path} {state}; {fix}.") from None


def _recompute_stats(path: str, num_frames: int) -> stats_lib.DatasetStats:
  """The dataset's statistics computed again from the records of the split they were computed from (the one of
  `num_frames` frames: "train" for every writer), in record order, exactly as the writer computed them."""
  clips = _read_json(os.path.join(path, builder.CLIPS_FILE), "clip index")
  splits = sorted(clips, key=lambda s: s != "train")
  split = next((s for s in splits if sum(c["num_frames"] for c in clips[s]) == num_frames), None)
  if split is None:
    raise UserError(f"The statistics {os.path.join(path, stats_lib.STATS_FILE)} hold {num_frames} frames, which no "
                    f"split of {os.path.join(path, builder.CLIPS_FILE)} does, so what they lack cannot be computed "
                    f"again; {stats_lib.refresh(os.path.join(path, stats_lib.STATS_FILE))}.")
  acc = stats_lib.StatsAccumulator()
  for ex in tfds.builder_from_directory(path).as_data_source(split=split):
    acc.add(ex["speaker_id"].decode(), ex["motion"], ex["audio"]["features"], int(ex["emotion"]))
  return acc.finalize()


@functools.lru_cache(maxsize=8)
def _dataset_stats(path: str, version: tuple[int, ...]) -> stats_lib.DatasetStats:
  """The statistics of the dataset at `path` (upgraded: stats.upgrade_stats), read once per process and version
  of its files (`version`: inode, size and modification time of stats.json and clips.json), so that an older
  dataset's are computed again only once."""
  return stats_lib.read_stats(os.path.join(path, stats_lib.STATS_FILE), lambda n: _recompute_stats(path, n))


@functools.lru_cache(maxsize=None)
def _warn_compressed(path: str) -> None:
  """One warning per process for a dataset whose shards are compressed (versions before builder.SHARD_OPTIONS)."""
  if builder.compressed_shards(path):
    logging.getLogger(__name__).warning(
        "Dataset %s stores its shards zstd-compressed, as older versions of the project wrote them; they read "
        "correctly but more slowly (BENCHMARKS.md, the loader rows): to store them uncompressed, %s.", path,
        stats_lib.refresh(os.path.join(path, stats_lib.STATS_FILE)))


def _open(root: str, encoder_name: str) -> OpenedDataset:
  path = builder.version_dir(root)
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    raise UserError(f"No playmate_clips dataset in {root} (expected {path}); run the preprocessing pipeline "
                    "to write one there, fix config.data.data_dir, or use --config.data.name=demo.")
  metadata = _read_json(os.path.join(path, "metadata.json"), "dataset metadata")
  if metadata.get("audio_encoder") != encoder_name:
    raise UserError(f"Dataset {path} holds audio features of encoder {metadata.get('audio_encoder')!r} but "
                    f"config.audio gives {encoder_name!r}; set config.audio to the dataset's settings "
                    f"({metadata.get('audio_config')}) or rewrite the dataset with this config.")
  clips_path = os.path.join(path, builder.CLIPS_FILE)
  clips = _read_json(clips_path, "clip index")
  stamp = lambda f: (os.stat(f).st_ino, os.stat(f).st_size, os.stat(f).st_mtime_ns) if os.path.exists(f) else ()
  stats = _dataset_stats(path, stamp(os.path.join(path, stats_lib.STATS_FILE)) + stamp(clips_path))
  _warn_compressed(path)
  return OpenedDataset(data_dir=root, path=path, metadata=metadata, stats=stats, clips=clips)


def open_dataset(config: ml_collections.ConfigDict, split: str | None = None) -> OpenedDataset:
  """The configured dataset, checked (exists, same audio encoder as config.audio, has `split`)."""
  ds = _open(data_dir(config), get_encoder(config.audio).name)
  if split is not None and split not in ds.clips:
    raise UserError(f"Dataset {ds.path} has no split {split!r} (it has {sorted(ds.clips)}); fix "
                    "config.data.train_split / config.data.eval_split.")
  return ds


def load_dataset_info(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """audio_encoder, feature_dim, num_speakers (with statistics), speakers, splits (clips each), paths."""
  ds = open_dataset(config)
  window = config.data.window
  return dict(
      data_dir=ds.data_dir, path=ds.path, audio_encoder=ds.metadata["audio_encoder"],
      feature_dim=int(ds.metadata["feature_dim"]), audio_config=ds.metadata.get("audio_config", {}),
      num_speakers=len(ds.stats.pose_mean), speakers=sorted(ds.stats.pose_mean),
      splits={k: len(v) for k, v in ds.clips.items()},
      frames={k: sum(c["num_frames"] for c in v) for k, v in ds.clips.items()},
      clips_shorter_than_window={k: sum(c["num_frames"] < window for c in v) for k, v in ds.clips.items()})


class _Records:
  """Random access to chosen records of a split (picklable, for Grain worker processes)."""

  def __init__(self, source, indices: Sequence[int]):
    self._source, self._indices = source, list(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict:
    return self._source[self._indices[i]]


def source_settings(config: ml_collections.ConfigDict) -> tuple[str, float]:
  """(config.data.source_expression, config.data.start_prob): how training windows and evaluation clips make
  their source."""
  return config.data.source_expression, float(config.data.start_prob)


def _motion_rows(m: dict, rows: np.ndarray) -> np.ndarray:
  """Raw motion vectors [len(rows), 69] of the given frames of a decoded clip's motion."""
  return stats_lib.motion_vector({k: np.asarray(m[k])[rows] for k in builder.MOTION_KEYS if k != "kp"})


def source_vector(stats: stats_lib.DatasetStats, frame: np.ndarray, speaker: str, mode: str) -> np.ndarray:
  """The raw source motion [69]: the frame's [69] pose, and its expression ("clip") or the speaker's reference
  expression ("reference")."""
  frame = np.array(frame, np.float32)
  if mode == "reference":
    frame[:EXP_DIM] = stats.reference_expression(speaker)
  return frame


@dataclasses.dataclass(frozen=True)
class RandomWindow(grain.transforms.RandomMap):
  """Random training windows of a decoded clip (window start and source frame uniform); see the module docstring
  for source_expression and start_prob. count = 1: one window, arrays as in a batch without its batch axis;
  count > 1: `count` independent windows of the clip, each array with a leading axis of that size."""
  stats: stats_lib.DatasetStats
  window: int
  prev_frames: int
  audio_context: int
  source_expression: str = "clip"
  start_prob: float = 0.0
  count: int = 1

  def random_map(self, ex: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, L, K, c, k = int(ex["num_frames"]), self.window, self.prev_frames, self.audio_context, self.count
    speaker = ex["speaker_id"].decode()
    starts, srcs, rows = np.zeros(k, int), np.zeros(k, int), np.zeros((k, K + L), int)
    for j in range(k):
      starts[j], srcs[j] = int(rng.integers(0, n - L + 1)), int(rng.integers(0, n))
      rows[j] = np.arange(starts[j] - K, starts[j] + L)
      if self.start_prob > 0 and rng.random() < self.start_prob:
        rows[j, :K] = -1
    m = ex["motion"]
    # Every window's K + L frames and, last, the source frames, read in one go. Frames before the clip start (or of
    # a window treated as one) are the source, as at inference.
    v = _motion_rows(m, np.append(np.maximum(rows, 0).ravel(), srcs))
    sources = np.stack([source_vector(self.stats, f, speaker, self.source_expression) for f in v[k * (K + L):]])
    frames = np.where(rows[..., None] < 0, sources[:, None], v[:k * (K + L)].reshape(k, K + L, MOTION_DIM))
    frames = self.stats.normalize_motion(frames.reshape(-1, MOTION_DIM), speaker).reshape(k, K + L, MOTION_DIM)
    sources = self.stats.normalize_motion(sources, speaker)
    audio = np.zeros((k, L + 2 * c, self.stats.audio_mean.shape[0]), np.float32)
    features = ex["audio"]["features"]
    for j, start in enumerate(starts):
      lo, hi = max(start - c, 0), min(start + L + c, n)
      audio[j, lo - (start - c):hi - (start - c)] = self.stats.normalize_audio(features[lo:hi])
    identity = np.stack([stats_lib.identity_vector(s, m["kp"][i]) for s, i in zip(sources, srcs)])
    out = dict(motion=frames[:, K:], prev_motion=frames[:, :K], audio=audio, identity=identity,
               emotion=np.full(k, ex["emotion"], np.int32))
    return {name: a[0] for name, a in out.items()} if k == 1 else out


def _merge_windows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """[B/k, k, ...] (k windows of each of B/k clips) -> [B, ...]."""
  return {name: a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]) for name, a in batch.items()}


def batch_spec(config: ml_collections.ConfigDict, feature_dim: int,
               process_count: int = 1) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} of this process's training batches: the contract between pipeline and model."""
  d = config.data
  b, f32 = d.batch_size // process_count, np.dtype(np.float32)
  return {"motion": ((b, d.window, MOTION_DIM), f32), "prev_motion": ((b, d.prev_frames, MOTION_DIM), f32),
          "audio": ((b, d.window + 2 * d.audio_context, feature_dim), f32), "identity": ((b, IDENTITY_DIM), f32),
          "emotion": ((b,), np.dtype(np.int32))}


def make_train_iterator(config: ml_collections.ConfigDict, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
  """Iterator of this process's batches (dicts of numpy arrays; keys and shapes in the module docs).

  Batch: motion [B, L, 69], prev_motion [B, K, 69], audio [B, L + 2c, D], identity [B, 132], emotion [B],
  B = config.data.batch_size // process_count.
  """
  d = config.data
  per_clip = int(d.windows_per_clip)
  ds = open_dataset(config, d.train_split)
  usable = [i for i, clip in enumerate(ds.clips[d.train_split]) if clip["num_frames"] >= d.window]
  if len(usable) < process_count:
    raise UserError(f"Split {d.train_split!r} of {ds.path} has {len(usable)} clips of at least "
                    f"config.data.window = {d.window} frames, fewer than the {process_count} processes; "
                    "lower config.data.window or add clips.")
  records = _Records(ds.source(d.train_split), usable[process_index::process_count])
  seed = int(np.random.SeedSequence([d.shuffle_seed, process_index]).generate_state(1)[0])
  mode, start_prob = source_settings(config)
  sampler = RandomWindow(ds.stats, d.window, d.prev_frames, d.audio_context, mode, start_prob, per_clip)
  pipeline = grain.MapDataset.source(records).seed(seed).shuffle().repeat().random_map(sampler)
  # Grain's element prefetch scans its whole ready buffer on every element (grain 0.2.18), so its default 500-deep
  # buffer and 16 threads slow the loader (BENCHMARKS.md, the loader rows): both are config settings.
  read = grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=d.read_buffer)
  pipeline = pipeline.to_iter_dataset(read).batch(d.batch_size // process_count // per_clip, drop_remainder=True)
  if per_clip > 1:
    pipeline = pipeline.map(_merge_windows)
  if d.worker_count > 0:
    if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags (defaults unless an app parsed them)
      flags.FLAGS.mark_as_parsed()
    pipeline = pipeline.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=d.worker_count, per_worker_buffer_size=d.worker_buffer_size))
  return iter(pipeline)


def load_eval_clips(config: ml_collections.ConfigDict, split: str | None = None, num_clips: int | None = None,
                    max_frames: int | None = None) -> list[dict[str, Any]]:
  """The first num_clips clips of the split (record order), each cut to its first max_frames frames.

  Each: clip_id, speaker_id, emotion, num_frames, audio [T, D] and motion [T, 69] normalized, identity [132]
  (source = frame 0, its expression as config.data.source_expression says), stats (MotionStats of the speaker,
  for denormalize_motion), kp [21, 3] (frame 0), waveform float32 [T * 640] (16 kHz) and reference_frame (JPEG
  bytes). Defaults from config.data/config.eval.
  """
  split = split or config.data.eval_split
  num_clips = config.eval.num_clips if num_clips is None else num_clips
  max_frames = config.eval.max_frames if max_frames is None else max_frames
  mode, _ = source_settings(config)
  ds = open_dataset(config)
  if split not in ds.clips and split == config.data.eval_split and config.data.train_split in ds.clips:
    # A dataset of one or two clips has no held-out split (the preprocessing pipeline said so when it wrote it).
    logging.getLogger(__name__).warning(
        "Dataset %s has no %r split; evaluating on the %r split's clips instead (they are trained on).", ds.path,
        split, config.data.train_split)
    split = config.data.train_split
  ds = open_dataset(config, split)
  source = ds.source(split)
  hop = int(config.audio.sample_rate) // int(config.audio.fps)
  clips = []
  for i in range(min(num_clips, len(source))):
    ex = source[i]
    n = min(int(ex["num_frames"]), max_frames)
    speaker = ex["speaker_id"].decode()
    m = {k: np.asarray(v)[:n] for k, v in ex["motion"].items()}
    raw = stats_lib.motion_vector(m)
    v = ds.stats.normalize_motion(raw, speaker)
    src = ds.stats.normalize_motion(source_vector(ds.stats, raw[0], speaker, mode), speaker)
    clips.append(dict(
        clip_id=ex["clip_id"].decode(), speaker_id=speaker, emotion=int(ex["emotion"]), num_frames=n,
        audio=ds.stats.normalize_audio(ex["audio"]["features"][:n]), motion=v,
        identity=stats_lib.identity_vector(src, m["kp"][0]),
        stats=ds.stats.motion_stats(speaker), kp=np.array(m["kp"][0], np.float32),
        waveform=ex["audio"]["waveform"][:n * hop].astype(np.float32) / 32768.0,
        reference_frame=ex["reference_frame"]))
  return clips


def load_labelled_expressions(config: ml_collections.ConfigDict, split: str,
                              max_clips: int | None = None) -> list[dict[str, Any]]:
  """The split's clips with an emotion label (the first max_clips of them, record order), ground truth only:
  clip_id, speaker_id, emotion and exp [T, 63] (raw, keypoint units)."""
  ds = open_dataset(config, split)
  labelled = [i for i, clip in enumerate(ds.clips[split]) if clip["emotion"] >= 0][:max_clips]
  source = ds.source(split)
  out = []
  for i in labelled:
    ex = source[i]
    exp = np.asarray(ex["motion"]["exp"], np.float32)
    out.append(dict(clip_id=ex["clip_id"].decode(), speaker_id=ex["speaker_id"].decode(),
                    emotion=int(ex["emotion"]), exp=exp.reshape(len(exp), EXP_DIM)))
  return out


def dataset_stats(config: ml_collections.ConfigDict) -> stats_lib.DatasetStats:
  """The configured dataset's normalization statistics (`.motion_stats(speaker_id)` gives MotionStats)."""
  return open_dataset(config).stats
