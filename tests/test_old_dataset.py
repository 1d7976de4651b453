"""Datasets written by older versions of the project: each form the history wrote reads with today's loader and
gives today's windows, clips and statistics, with one warning per difference saying how to refresh it; what cannot
be read is one sentence naming the file and the fix.

The forms, from `git log -p` of playmate_jax/data/builder.py and stats.py (clips.json and metadata.json were
written by every version):
- the first version (9c04b94): tensors in TFDS' default (protobuf) encoding, shards zstd-compressed (TFDS' ArrayRecord
  writer, options group_size:1), stats.json without kp_mean and exp_reference;
- 3e032ca .. c60e6ae: raw-bytes tensors (today's), zstd shards, stats.json without exp_reference;
- c60e6ae .. f57203c: uncompressed shards (today's), stats.json without exp_reference;
- since f57203c: today's.
"""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from playmate_jax import configlib
from playmate_jax.audio import get_encoder
from playmate_jax.data import builder, demo, loader, stats as stats_lib
from playmate_jax.errors import UserError
from playmate_jax.motion import NUM_KP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEUTRAL = stats_lib.NEUTRAL


def config(data_dir, **data):
  """configs/stage1.py:tiny over the dataset in data_dir, stage 2's reference source (reads exp_reference)."""
  c = configlib.load_config(os.path.join(ROOT, "configs", "stage1.py") + ":tiny")
  with c.unlocked():
    c.data.name, c.data.data_dir, c.data.source_expression = "playmate_clips", str(data_dir), "reference"
    for k, v in data.items():
      setattr(c.data, k, v)
  return c


def examples(seed: int, feature_dim: int) -> dict[str, list[dict]]:
  """Train and test clips of three speakers; s0 and s1 have neutral clips, s2 none (its reference: all frames)."""
  rng = np.random.default_rng(seed)

  def clip(i, speaker, emotion):
    n = int(rng.integers(20, 40))
    f = lambda *s: rng.normal(size=(n, *s)).astype(np.float32)
    return dict(clip_id=f"c{i:02d}", speaker_id=speaker, emotion=emotion,
                motion=dict(exp=f(NUM_KP, 3) * 0.02, pitch=f() * 5, yaw=f() * 5, roll=f() * 5, t=f(3) * 0.1,
                            scale=1.5 + 0.1 * f(), kp=f(NUM_KP, 3) * 0.1),
                audio=dict(waveform=rng.integers(-3000, 3000, n * 640).astype(np.int16), features=f(feature_dim)),
                reference_frame=bytes(rng.integers(0, 256, 40, dtype=np.uint8)))

  emotions = [NEUTRAL, 0, -1, 3, NEUTRAL, 7, -1, 2, 4]   # clip i is speaker s{i % 3}'s
  train = [clip(i, f"s{i % 3}", emotions[i]) for i in range(9)]
  return {"train": train, "test": [clip(20 + i, f"s{i}", i) for i in range(2)]}


def write(root, protobuf: bool = False) -> None:
  """The tiny dataset written with the project's writer; `protobuf`: with the first version's tensor encoding."""
  enc = get_encoder(config(root).audio)
  with pytest.MonkeyPatch.context() as mp:
    if protobuf:  # the first version's schema: the same tensors without encoding=BYTES (TFDS' default)
      tensor = tfds.features.Tensor
      mp.setattr(tfds.features, "Tensor", lambda *args, encoding=None, **kw: tensor(*args, **kw))
    builder.write_dataset(root, {k: iter(v) for k, v in examples(0, enc.feature_dim).items()},
                          encoder_name=enc.name, feature_dim=enc.feature_dim, num_shards=2)


def zstd_shards(path) -> None:
  """Every shard rewritten as TFDS wrote them before c60e6ae: its ArrayRecord writer's options, zstd by default."""
  from array_record.python import array_record_module as ar
  for name in os.listdir(path):
    if ".array_record-" in name:
      shard = os.path.join(path, name)
      reader = ar.ArrayRecordReader(shard)
      records = reader.read(list(range(reader.num_records())))
      reader.close()
      writer = ar.ArrayRecordWriter(shard, "group_size:1")
      for r in records:
        writer.write(r)
      writer.close()
      assert "zstd" in ar.ArrayRecordReader(shard).writer_options_string()


def edit_json(path, edit) -> None:
  with open(path) as f:
    record = json.load(f)
  edit(record)
  with open(path, "w") as f:
    json.dump(record, f)


def read_all(cfg) -> dict:
  """What launch.py and pipelines/evaluate.py read of a dataset: info, statistics, training batches (the same seed,
  so the same windows), evaluation clips and labelled expressions."""
  it = loader.make_train_iterator(cfg)
  return dict(info=loader.load_dataset_info(cfg), stats=loader.dataset_stats(cfg),
              batches=[next(it) for _ in range(3)], eval=loader.load_eval_clips(cfg),
              labelled=loader.load_labelled_expressions(cfg, "train"))


@pytest.fixture(scope="module")
def today(tmp_path_factory):
  """(data_dir, what it reads as) of the tiny dataset written by today's writer."""
  root = tmp_path_factory.mktemp("today")
  write(root)
  return root, read_all(config(root))


FORMS = {  # name: (protobuf tensors, zstd shards, stats.json fields dropped)
    "9c04b94": (True, True, ("kp_mean", "exp_reference")),
    "3e032ca..c60e6ae": (False, True, ("exp_reference",)),
    "c60e6ae..f57203c": (False, False, ("exp_reference",)),
}


@pytest.mark.parametrize("form", FORMS)
def test_older_forms_read_as_today(today, form, tmp_path, caplog):
  root, want = today
  protobuf, zstd, dropped = FORMS[form]
  old = tmp_path / "old"
  if protobuf:
    write(old, protobuf=True)
  else:
    shutil.copytree(root, old)
  path = builder.version_dir(old)
  if protobuf:  # the records really are the other encoding
    with open(os.path.join(path, "features.json")) as f:
      assert '"encoding": "none"' in f.read()
  if zstd:
    zstd_shards(path)
  edit_json(os.path.join(path, stats_lib.STATS_FILE), lambda r: [r.pop(k) for k in dropped])

  with caplog.at_level(logging.WARNING):
    got = read_all(config(old))
  assert got["info"] == {**want["info"], "data_dir": str(old), "path": path}
  for field in ("exp_mean", "exp_std", "default_pose_mean", "default_pose_std", "audio_mean", "audio_std", "kp_mean"):
    np.testing.assert_array_equal(getattr(got["stats"], field), getattr(want["stats"], field))
  for field in ("pose_mean", "pose_std", "exp_reference"):  # recomputed ones bit for bit: the writer's own sums
    a, b = getattr(got["stats"], field), getattr(want["stats"], field)
    assert sorted(a) == sorted(b) == ["s0", "s1", "s2"]
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(got["batches"], want["batches"]):  # identity = reference expressions: they are in the windows
    for k in b:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(got["eval"] + got["labelled"], want["eval"] + want["labelled"]):
    for k in ("motion", "audio", "identity", "exp", "clip_id", "emotion"):
      if k in b:
        np.testing.assert_array_equal(a[k], b[k])

  messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  about_stats = [m for m in messages if stats_lib.STATS_FILE in m and "computed again" in m]
  assert len(about_stats) == 1, messages  # once, although the dataset was opened many times
  assert all(k in about_stats[0] for k in dropped) and "rerun pipelines/preprocess.py" in about_stats[0]
  about_shards = [m for m in messages if "zstd-compressed" in m]
  assert len(about_shards) == int(zstd) and all(path in m for m in about_shards)


def damaged(root, tmp_path, edit) -> str:
  """A copy of the dataset with `edit(version folder)` applied; returns the copy's version folder."""
  shutil.copytree(root, tmp_path / "d")
  path = builder.version_dir(tmp_path / "d")
  edit(path)
  return path


def one_sentence(e: pytest.ExceptionInfo) -> str:
  msg = str(e.value)
  assert "\n" not in msg and msg.endswith(".") and msg.count("; ") >= 1
  return msg


@pytest.mark.parametrize("case, file", [
    ("stats.json missing", "stats.json"),
    ("stats.json cut short", "stats.json"),
    ("stats.json without a field every version wrote", "stats.json"),
    ("stats.json of no split", "stats.json"),
    ("metadata.json missing", "metadata.json"),
    ("clips.json missing", "clips.json"),
    ("clips.json cut short", "clips.json"),
])
def test_what_cannot_be_read_is_one_sentence(today, tmp_path, case, file):
  root, _ = today
  stats_path = lambda p: os.path.join(p, stats_lib.STATS_FILE)
  cut = lambda f: open(f, "r+").truncate(os.path.getsize(f) // 2)
  edits = {
      "stats.json missing": lambda p: os.remove(stats_path(p)),
      "stats.json cut short": lambda p: cut(stats_path(p)),
      "stats.json without a field every version wrote": lambda p: edit_json(stats_path(p),
                                                                           lambda r: r.pop("audio_std")),
      # an old file (references missing) whose frames are no split's: which clips to compute them from is unknown
      "stats.json of no split": lambda p: edit_json(
          stats_path(p), lambda r: (r.pop("exp_reference"), r.update(num_frames=r["num_frames"] + 1))),
      "metadata.json missing": lambda p: os.remove(os.path.join(p, "metadata.json")),
      "clips.json missing": lambda p: os.remove(os.path.join(p, builder.CLIPS_FILE)),
      "clips.json cut short": lambda p: cut(os.path.join(p, builder.CLIPS_FILE)),
  }
  path = damaged(root, tmp_path, edits[case])
  with pytest.raises(UserError) as e:
    loader.load_dataset_info(config(tmp_path / "d"))
  msg = one_sentence(e)
  assert os.path.join(path, file) in msg and f"delete {path} and rerun pipelines/preprocess.py" in msg


def test_a_runs_older_statistics(today, tmp_path):
  """A training workdir's copy (dataset_stats.json, what sample.py and animate.py read) is read without its
  dataset: no references -> the documented fallback (the global expression mean); no kp_mean -> one sentence."""
  root, want = today
  copy = tmp_path / "dataset_stats.json"
  shutil.copy(os.path.join(builder.version_dir(root), stats_lib.STATS_FILE), copy)
  edit_json(copy, lambda r: r.pop("exp_reference"))
  st = stats_lib.read_stats(copy)
  assert st.exp_reference == {}
  np.testing.assert_array_equal(st.reference_expression("s0"), want["stats"].exp_mean)
  np.testing.assert_array_equal(st.kp_mean, want["stats"].kp_mean)
  edit_json(copy, lambda r: r.pop("kp_mean"))
  with pytest.raises(UserError) as e:
    stats_lib.read_stats(copy)
  assert str(copy) in one_sentence(e) and "kp_mean" in str(e.value)
  edit_json(copy, lambda r: r.pop("exp_mean"))
  with pytest.raises(UserError) as e:
    stats_lib.read_stats(copy)
  assert f"copy the stats.json of the dataset the run was trained on to {copy}" in one_sentence(e)


def test_demo_records_its_version(tmp_path, caplog):
  """The demo writes demo.json; a demo without it is dated by its statistics; another version's is used with a
  warning (the default cache folder is named after the version, a config.data.data_dir is not)."""
  cfg = config(tmp_path)
  with cfg.unlocked():
    cfg.data.name = "demo"
  spec = demo.DemoSpec(num_speakers=2, train_clips_per_speaker=2, test_clips_per_speaker=1, min_seconds=1.0,
                       max_seconds=1.2)
  demo.ensure_demo_dataset(cfg, spec)
  path = builder.version_dir(tmp_path)
  with open(os.path.join(path, demo.DEMO_FILE)) as f:
    assert json.load(f) == {"demo_version": demo.DEMO_VERSION}
  os.remove(os.path.join(path, demo.DEMO_FILE))
  assert demo.written_version(path) == demo.DEMO_VERSION == 6   # references: version 6, before demo.json
  edit_json(os.path.join(path, stats_lib.STATS_FILE), lambda r: r.pop("exp_reference"))
  assert demo.written_version(path) == 2
  with caplog.at_level(logging.WARNING):
    demo.ensure_demo_dataset(cfg, spec)
    loader.dataset_stats(cfg)   # and it reads
  messages = [r.getMessage() for r in caplog.records if "demo version 2" in r.getMessage()]
  assert len(messages) == 1 and f"delete {path}" in messages[0]
