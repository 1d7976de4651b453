"""The `playmate_clips` TFDS builder: one example per clip, ArrayRecord files, no TensorFlow needed.

TFDS 4.9 writes and reads Tensor features (dynamic shapes included), scalars, text and raw bytes with numpy
only; `file_format='array_record'` gives random-access shards that `tfds.data_source` / Grain read.
Layout: DATA_DIR/playmate_clips/1.0.0/ holds the shards, dataset_info.json, features.json,
metadata.json (audio encoder), and this project's stats.json and clips.json (written in the same
atomic step as the shards, see `write_dataset`). The shards are stored uncompressed (`SHARD_OPTIONS`).
"""

from collections.abc import Iterable, Iterator, Mapping
import glob
import json
import os
import tempfile
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from playmate_jax.data import stats as stats_lib
from playmate_jax.errors import UserError
from playmate_jax.motion import MOTION_KEYS, NUM_KP  # noqa: F401  (MOTION_KEYS re-exported)

NAME = "playmate_clips"
VERSION = "1.0.0"
CLIPS_FILE = "clips.json"
# TFDS writes ArrayRecord with the library's default zstd:3. The clips (int16 speech, float features) barely shrink
# with it, and decompressing them was the largest part of reading a training window (BENCHMARKS.md, the loader
# rows): the shards are rewritten uncompressed (same records, same order).
SHARD_OPTIONS = "group_size:1,uncompressed"


def features(feature_dim: int) -> tfds.features.FeaturesDict:
  """The dataset schema (DESIGN.md "Dataset"); nested dicts are the `motion/...` and `audio/...` keys."""
  # Raw-bytes encoding: ~20x faster to write than TFDS' default protobuf lists, and int16 stays 2 bytes.
  tensor = lambda shape, dtype: tfds.features.Tensor(shape=shape, dtype=dtype,
                                                     encoding=tfds.features.Encoding.BYTES)
  frames = lambda *shape: tensor((None, *shape), np.float32)
  return tfds.features.FeaturesDict({
      "clip_id": tfds.features.Text(),
      "speaker_id": tfds.features.Text(),
      "num_frames": np.int32,
      "emotion": np.int32,
      "motion": {
          "exp": frames(NUM_KP, 3), "pitch": frames(), "yaw": frames(), "roll": frames(),
          "t": frames(3), "scale": frames(), "kp": frames(NUM_KP, 3),
      },
      "audio": {
          "waveform": tensor((None,), np.int16),
          "features": tensor((None, feature_dim), np.float16),
      },
      "reference_frame": tfds.features.Tensor(shape=(), dtype=np.object_),  # JPEG bytes
  })


def _check_example(ex: Mapping[str, Any], feature_dim: int) -> dict[str, Any]:
  """The example with every field cast to the schema's dtype; ValueError on inconsistent shapes."""
  m, a = ex["motion"], ex["audio"]
  n = int(np.shape(m["exp"])[0])
  motion = {k: np.asarray(m[k], np.float32) for k in MOTION_KEYS}
  shapes = dict(exp=(n, NUM_KP, 3), kp=(n, NUM_KP, 3), t=(n, 3), pitch=(n,), yaw=(n,), roll=(n,), scale=(n,))
  feats = np.asarray(a["features"], np.float16)
  bad = [k for k, s in shapes.items() if motion[k].shape != s]
  if bad or feats.shape != (n, feature_dim) or int(ex.get("num_frames", n)) != n:
    raise ValueError(f"Clip {ex['clip_id']!r}: inconsistent shapes (frames {n}, features {feats.shape}, "
                     f"fields {bad}); every per-frame field needs the same number of frames.")
  emotion = int(ex["emotion"])
  if not -1 <= emotion <= 7:
    raise ValueError(f"Clip {ex['clip_id']!r}: emotion {emotion} is not -1 or 0..7.")
  return dict(clip_id=str(ex["clip_id"]), speaker_id=str(ex["speaker_id"]), num_frames=n, emotion=emotion,
              motion=motion, audio=dict(waveform=np.asarray(a["waveform"], np.int16), features=feats),
              reference_frame=bytes(ex["reference_frame"]))


class PlaymateClips(tfds.core.GeneratorBasedBuilder):
  """Talking-head clips: LivePortrait motion per frame, 16 kHz speech, precomputed audio features."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Clips with motion, waveform, audio features and a reference frame."}
  # No checksums file (nothing is downloaded). Also avoids TFDS 4.9.10's lookup of the module path, which
  # needs the `importlib_resources` backport on Python >= 3.9 (tensorflow/datasets#11212).
  code_path = None

  def __init__(self, *, splits: Mapping[str, Iterable[Mapping]] | None = None, encoder_name: str = "",
               feature_dim: int = 0, audio_config: Mapping | None = None,
               stats_split: str = "train", **kwargs):
    self._splits = splits
    metadata = os.path.join(version_dir(kwargs.get("data_dir") or ""), "metadata.json")
    if not feature_dim and kwargs.get("data_dir") and os.path.isfile(metadata):
      # Reading (e.g. tfds.data_source("playmate_clips", data_dir=...)): the schema's feature_dim is on disk.
      with open(metadata) as f:
        meta = json.load(f)
      encoder_name, feature_dim, audio_config = meta["audio_encoder"], meta["feature_dim"], meta["audio_config"]
    self._encoder = dict(audio_encoder=encoder_name, feature_dim=int(feature_dim),
                         audio_config=dict(audio_config or {}))
    self._stats_split = stats_split
    self._clips: dict[str, list[dict]] = {}
    self._acc = stats_lib.StatsAccumulator()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=features(self._encoder["feature_dim"]),
        metadata=tfds.core.MetadataDict(self._encoder),
        disable_shuffling=True,  # records keep the order they were given in (clips.json relies on it)
    )

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    if not self._splits:
      raise ValueError("PlaymateClips is written with write_dataset(data_dir, splits, ...).")
    if self._stats_split not in self._splits:
      raise ValueError(f"Split {self._stats_split!r} (normalization statistics) is not among {list(self._splits)}.")
    return {name: self._generate_examples(name, examples) for name, examples in self._splits.items()}

  def _generate_examples(self, split: str, examples: Iterable[Mapping]) -> Iterator[tuple[int, dict]]:
    index = self._clips.setdefault(split, [])
    for i, ex in enumerate(examples):
      ex = _check_example(ex, self._encoder["feature_dim"])
      index.append(dict(clip_id=ex["clip_id"], speaker_id=ex["speaker_id"], num_frames=ex["num_frames"],
                        emotion=ex["emotion"]))
      if split == self._stats_split:
        self._acc.add(ex["speaker_id"], ex["motion"], ex["audio"]["features"], ex["emotion"])
      yield i, ex

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # self.data_dir is still the incomplete folder here: these files appear with the shards, atomically.
    for shard in glob.glob(os.path.join(self.data_dir, f"{NAME}-*.array_record-*")):
      _rewrite_shard(shard, SHARD_OPTIONS)
    stats_lib.save_stats(self._acc.finalize(), os.path.join(self.data_dir, stats_lib.STATS_FILE))
    with open(os.path.join(self.data_dir, CLIPS_FILE), "w") as f:
      json.dump(self._clips, f)


def _rewrite_shard(path: str, options: str, chunk: int = 64) -> None:
  """Rewrites one ArrayRecord shard with writer `options` (records and order unchanged), `chunk` records at a time."""
  from array_record.python import array_record_module
  reader = array_record_module.ArrayRecordReader(path)
  tmp = path + ".rewrite"
  writer = array_record_module.ArrayRecordWriter(tmp, options)
  n = reader.num_records()
  for start in range(0, n, chunk):
    for record in reader.read(list(range(start, min(start + chunk, n)))):
      writer.write(record)
  writer.close()
  reader.close()
  os.replace(tmp, path)


def compressed_shards(path: str) -> bool:
  """Whether the dataset at `path` (a version folder) stores its shards compressed, as versions before
  SHARD_OPTIONS wrote them (TFDS' default, zstd): they read correctly, more slowly. Its first shard tells (every
  shard of a dataset is written alike)."""
  from array_record.python import array_record_module
  shards = sorted(glob.glob(os.path.join(path, f"{NAME}-*.array_record-*")))
  if not shards:
    return False
  reader = array_record_module.ArrayRecordReader(shards[0])
  try:
    return "uncompressed" not in reader.writer_options_string()
  finally:
    reader.close()


def version_dir(data_dir: str | os.PathLike) -> str:
  """DATA_DIR/playmate_clips/1.0.0: where the shards, metadata and statistics of a dataset live."""
  return os.path.join(os.fspath(data_dir), NAME, VERSION)


def write_dataset(data_dir: str | os.PathLike, splits: Mapping[str, Iterable[Mapping]], *, encoder_name: str,
                  feature_dim: int, audio_config: Mapping | None = None, num_shards: int | None = None,
                  stats_split: str = "train", overwrite: bool = False) -> str:
  """Writes `playmate_clips` splits from iterables of example dicts; returns the version folder.

  Each example: clip_id, speaker_id, emotion, motion (dict of MOTION_KEYS arrays, T frames),
  audio (dict waveform int16 [N], features [T, feature_dim]), reference_frame (JPEG bytes); num_frames
  is optional (checked if given). Records keep the iteration order. Normalization statistics come from
  `stats_split`. num_shards=None lets TFDS choose from the size (64 MiB .. 1 GiB per shard).
  """
  path = version_dir(data_dir)
  if os.path.exists(path) and not overwrite:
    raise UserError(f"Dataset {path} already exists; delete it or pass overwrite=True to rewrite it.")
  builder = PlaymateClips(splits=splits, encoder_name=encoder_name, feature_dim=feature_dim,
                          audio_config=audio_config, stats_split=stats_split, data_dir=os.fspath(data_dir),
                          file_format="array_record")
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if overwrite:
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
  config = tfds.download.DownloadConfig(num_shards=num_shards, download_mode=mode)
  with tempfile.TemporaryDirectory() as downloads:  # nothing is downloaded; keeps data_dir free of it
    builder.download_and_prepare(download_dir=downloads, download_config=config)
  return path
