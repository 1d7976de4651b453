"""playmate_jax.data: TFDS round trip, statistics, demo dataset, Grain pipelines."""

import importlib.util
import json
import os
import threading

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from playmate_jax import configlib, motion
from playmate_jax.data import builder, demo, loader, stats as stats_lib
from playmate_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, **data_overrides):
  spec = importlib.util.spec_from_file_location("stage1", os.path.join(ROOT, "configs", "stage1.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("tiny")
  cfg.data.data_dir = str(data_dir)
  for k, v in data_overrides.items():
    setattr(cfg.data, k, v)
  return cfg


def _random_example(rng, i, speaker, dim):
  n = int(rng.integers(5, 30))
  f = lambda *s: rng.normal(size=(n, *s)).astype(np.float32)
  return dict(clip_id=f"c{i}", speaker_id=speaker, emotion=int(rng.integers(-1, 8)),
              motion=dict(exp=f(21, 3), pitch=f() * 5, yaw=f() * 5, roll=f() * 5, t=f(3) * 0.1,
                          scale=1.5 + 0.1 * f(), kp=f(21, 3)),
              audio=dict(waveform=rng.integers(-3000, 3000, n * 640).astype(np.int16), features=f(dim) * 3 - 2),
              reference_frame=bytes(rng.integers(0, 256, 50, dtype=np.uint8)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """A small random dataset written with write_dataset: (data_dir, {split: [examples]})."""
  rng = np.random.default_rng(0)
  splits = {"train": [_random_example(rng, i, f"s{i % 3}", 5) for i in range(12)],
            "test": [_random_example(rng, 100 + i, "s9", 5) for i in range(3)]}
  root = tmp_path_factory.mktemp("small")
  builder.write_dataset(root, {k: iter(v) for k, v in splits.items()}, encoder_name="fake5", feature_dim=5,
                     num_shards=2)
  return root, splits


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  assert demo.ensure_demo_dataset(_config(root)) == str(root)
  return root


def _train(demo_dir, split="train"):
  return tfds.builder_from_directory(builder.version_dir(demo_dir)).as_data_source(split=split)


def test_round_trip_schema(small):
  root, splits = small
  path = builder.version_dir(root)
  b = tfds.builder_from_directory(path)
  assert b.info.metadata["audio_encoder"] == "fake5" and b.info.metadata["feature_dim"] == 5
  shards = [f for f in os.listdir(path) if "train.array_record" in f]
  assert len(shards) == 2
  from array_record.python import array_record_module
  for shard in shards:  # stored uncompressed (fast random reads), no leftover temporary files
    assert "uncompressed" in array_record_module.ArrayRecordReader(os.path.join(path, shard)).writer_options_string()
  assert not [f for f in os.listdir(path) if f.endswith(".rewrite")]
  for split, examples in splits.items():
    src = b.as_data_source(split=split)
    assert len(src) == len(examples)
    for ex, want in zip(src, examples):  # records keep the order they were written in
      n = want["motion"]["exp"].shape[0]
      assert ex["clip_id"].decode() == want["clip_id"] and ex["speaker_id"].decode() == want["speaker_id"]
      assert ex["num_frames"] == n and ex["emotion"] == want["emotion"]
      for k, v in want["motion"].items():
        assert ex["motion"][k].dtype == np.float32 and ex["motion"][k].shape == v.shape
        np.testing.assert_array_equal(ex["motion"][k], v)
      assert ex["audio"]["waveform"].dtype == np.int16
      np.testing.assert_array_equal(ex["audio"]["waveform"], want["audio"]["waveform"])
      assert ex["audio"]["features"].dtype == np.float16 and ex["audio"]["features"].shape == (n, 5)
      np.testing.assert_array_equal(ex["audio"]["features"], want["audio"]["features"].astype(np.float16))
      assert ex["reference_frame"] == want["reference_frame"]
  by_name = tfds.data_source(builder.NAME, data_dir=str(root), split="train")  # the registered builder reads too
  np.testing.assert_array_equal(by_name[1]["audio"]["features"],
                                splits["train"][1]["audio"]["features"].astype(np.float16))
  with open(os.path.join(path, builder.CLIPS_FILE)) as f:
    assert [c["clip_id"] for c in json.load(f)["train"]] == [e["clip_id"] for e in splits["train"]]
  with pytest.raises(UserError, match="already exists"):
    builder.write_dataset(root, {"train": iter(splits["train"])}, encoder_name="fake5", feature_dim=5)


def test_stats_match_numpy(small):
  root, splits = small
  st = stats_lib.read_stats(os.path.join(builder.version_dir(root), stats_lib.STATS_FILE))
  train = splits["train"]  # statistics come from the train split only
  v = {e["speaker_id"]: [] for e in train}
  for e in train:
    v[e["speaker_id"]].append(np.asarray(motion.pack_motion(**{k: e["motion"][k] for k in
                                                              ("exp", "pitch", "yaw", "roll", "t", "scale")})))
  allv = np.concatenate([x for xs in v.values() for x in xs])
  np.testing.assert_allclose(st.exp_mean, allv[:, :63].mean(0), atol=1e-5)
  np.testing.assert_allclose(st.exp_std, allv[:, :63].std(0), rtol=1e-4)
  for spk, xs in v.items():
    pose = np.concatenate(xs)[:, 63:]
    np.testing.assert_allclose(st.pose_mean[spk], pose.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st.pose_std[spk], pose.std(0), rtol=1e-4)
  np.testing.assert_allclose(st.default_pose_std, np.median(np.stack(list(st.pose_std.values())), 0))
  feats = np.concatenate([e["audio"]["features"].astype(np.float16).astype(np.float64) for e in train])
  np.testing.assert_allclose(st.audio_mean, feats.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(st.audio_std, feats.std(0), rtol=1e-4)
  assert st.num_frames == len(allv) and "s9" not in st.pose_mean
  # The numpy pack/normalize of the input pipeline agree with playmate_jax.motion's jnp versions.
  e = train[0]
  np.testing.assert_allclose(stats_lib.motion_vector(e["motion"]), v[e["speaker_id"]][0], atol=1e-6)
  for spk in (e["speaker_id"], "unseen"):
    want = motion.normalize_motion(v[e["speaker_id"]][0], st.motion_stats(spk))
    np.testing.assert_allclose(st.normalize_motion(v[e["speaker_id"]][0], spk), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(st.motion_stats("unseen").pose_std, st.default_pose_std)


def _feature_amplitude(features):
  """Amplitude per frame from the stored log-mel features (ln of mel power)."""
  return np.sqrt(np.exp(features.astype(np.float32)).sum(-1))


def test_demo_mouth_follows_audio(demo_dir):
  train, test = _train(demo_dir), _train(demo_dir, "test")
  exp, amp = [], []
  for i in range(0, len(train), 5):
    exp.append(train[i]["motion"]["exp"])
    amp.append(_feature_amplitude(train[i]["audio"]["features"]))
  m, a = np.asarray(motion.mouth_opening(np.concatenate(exp))), np.concatenate(amp)
  corr = lambda x, y: np.corrcoef(x, y)[0, 1]
  assert corr(m, a) > 0.9
  assert corr(m[1:], a[1:]) > max(corr(m[2:], a[:-2]), corr(m[:-2], a[2:]))  # no lag
  assert 0.0 <= m.min() and m.max() <= demo.MOUTH_GAIN * 1.0001

  # Learnable from the features: least squares on 3 frames of log-mel (train) predicts the mouth on test.
  def design(src, idx):
    xs, ys = [], []
    for i in idx:
      ex = src[i]
      f = ex["audio"]["features"].astype(np.float32)
      f = np.concatenate([f[:1], f, f[-1:]])
      xs.append(np.concatenate([f[:-2], f[1:-1], f[2:], np.exp(f[1:-1]), np.ones((len(f) - 2, 1))], -1))
      ys.append(ex["motion"]["exp"])
    return np.concatenate(xs), np.asarray(motion.mouth_opening(np.concatenate(ys)))
  x, y = design(train, range(0, len(train), 3))
  w = np.linalg.lstsq(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ y, rcond=None)[0]
  xt, yt = design(test, range(len(test)))
  assert corr(xt @ w, yt) > 0.9


def test_demo_dataset_properties(demo_dir):
  train, test = _train(demo_dir), _train(demo_dir, "test")
  info = loader.load_dataset_info(_config(demo_dir))
  assert info["num_speakers"] == 8 and info["feature_dim"] == 80 and info["splits"]["train"] >= 100
  assert info["audio_encoder"] == "logmel80-sr16000-hop640-n1024-f55-7600"
  w, _ = demo._mouth_direction()
  w = w / np.linalg.norm(w)
  clips, hashes = [], {}
  for split, src in (("train", train), ("test", test)):
    for ex in src:
      n = ex["num_frames"]
      assert 4 * 25 <= n <= 12 * 25 and ex["audio"]["waveform"].shape == (n * 640,)
      exp = ex["motion"]["exp"].reshape(n, 63).mean(0)
      clips.append((split, ex["clip_id"].decode(), ex["speaker_id"].decode(), ex["emotion"], exp - (exp @ w) * w))
      hashes.setdefault(split, set()).add(ex["audio"]["waveform"].tobytes()[:20000])
  img = cv2.imdecode(np.frombuffer(train[0]["reference_frame"], np.uint8), cv2.IMREAD_COLOR)
  assert img.shape == (64, 64, 3)
  ids = {s: {c[1] for c in clips if c[0] == s} for s in ("train", "test")}
  assert not ids["train"] & ids["test"] and not hashes["train"] & hashes["test"]
  emotions = [c[3] for c in clips]
  assert set(emotions) == set(range(-1, 8))
  # Emotion offsets: within a speaker, clips of the same emotion are closer than clips of different ones.
  same, diff = [], []
  for i, a in enumerate(clips):
    for b in clips[i + 1:]:
      if a[2] == b[2] and a[3] >= 0 and b[3] >= 0:
        (same if a[3] == b[3] else diff).append(np.linalg.norm(a[4] - b[4]))
  assert len(same) > 10 and max(same) < 0.5 * min(diff)


def test_demo_deterministic_and_concurrent(tmp_path):
  spec = demo.DemoSpec(num_speakers=2, train_clips_per_speaker=2, test_clips_per_speaker=1, max_seconds=5.0)
  dirs = [tmp_path / "a", tmp_path / "a", tmp_path / "b"]
  errors = []

  def run(d):
    try:
      demo.ensure_demo_dataset(_config(d), spec)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=run, args=(d,)) for d in dirs]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert sorted(os.listdir(tmp_path / "a")) == ["playmate_clips"]  # temporary folders are gone
  a, b = _train(tmp_path / "a"), _train(tmp_path / "b")
  assert len(a) == 4
  for x, y in zip(a, b):
    assert x["clip_id"] == y["clip_id"]
    np.testing.assert_array_equal(x["audio"]["waveform"], y["audio"]["waveform"])
    np.testing.assert_array_equal(x["motion"]["exp"], y["motion"]["exp"])


def _normalized_clips(demo_dir):
  """Per train clip: normalized motion [T, 69] and features [T, D]; and kp row bytes -> (clip, frame)."""
  cfg = _config(demo_dir)
  st = loader.dataset_stats(cfg)
  clips, by_kp = [], {}
  for c, ex in enumerate(_train(demo_dir)):
    spk = ex["speaker_id"].decode()
    clips.append((st.normalize_motion(stats_lib.motion_vector(ex["motion"]), spk),
                  st.normalize_audio(ex["audio"]["features"])))
    for f, row in enumerate(ex["motion"]["kp"].reshape(len(ex["motion"]["kp"]), -1)):
      by_kp[row.tobytes()] = (c, f)
  return clips, by_kp


def test_batches(demo_dir):
  cfg = _config(demo_dir)
  L, K, c, B = cfg.data.window, cfg.data.prev_frames, cfg.data.audio_context, cfg.data.batch_size
  it = loader.make_train_iterator(cfg)
  batches = [next(it) for _ in range(150)]
  b = batches[0]
  shapes = dict(motion=(B, L, 69), prev_motion=(B, K, 69), audio=(B, L + 2 * c, 80), identity=(B, 132),
                emotion=(B,))
  assert {k: v.shape for k, v in b.items()} == shapes
  assert all(v.dtype == (np.int32 if k == "emotion" else np.float32) for k, v in b.items())
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == loader.batch_spec(cfg, 80)
  m = np.concatenate([x["motion"].reshape(-1, 69) for x in batches])
  assert np.abs(m.mean(0)).max() < 0.3 and np.all(np.abs(m.std(0) - 1) < 0.3)
  a = np.concatenate([x["audio"][:, c:-c].reshape(-1, 80) for x in batches])
  assert np.abs(a.mean(0)).max() < 0.3 and np.all(np.abs(a.std(0) - 1) < 0.3)

  clips, by_kp = _normalized_clips(demo_dir)
  seen_early = seen_late = 0
  for x in batches[:40]:
    for i in range(B):
      clip, src = by_kp[x["identity"][i, 69:].tobytes()]
      mot, feats = clips[clip]
      np.testing.assert_allclose(x["identity"][i, :69], mot[src], atol=1e-5)
      start = int(np.argmin(np.abs(mot[:len(mot) - L + 1] - x["motion"][i, 0]).sum(-1)))
      np.testing.assert_allclose(x["motion"][i], mot[start:start + L], atol=1e-5)
      for j in range(K):  # frame start - K + j
        want = mot[start - K + j] if start - K + j >= 0 else mot[src]
        np.testing.assert_allclose(x["prev_motion"][i, j], want, atol=1e-5)
      for j in range(L + 2 * c):
        f = start - c + j
        want = feats[f] if 0 <= f < len(feats) else np.zeros(80)
        np.testing.assert_allclose(x["audio"][i, j], want, atol=1e-4)
      seen_early += start < K
      seen_late += start >= K
  assert seen_early and seen_late


def test_windows_per_clip(demo_dir):
  """k windows per clip read are k independent windows (the same as k one-window draws from the same generator),
  side by side in the batch; the batch keeps its shapes."""
  cfg = _config(demo_dir, windows_per_clip=2)
  ds = loader.open_dataset(cfg, "train")
  ex = ds.source("train")[0]
  d = cfg.data
  window = lambda k: loader.RandomWindow(ds.stats, d.window, d.prev_frames, d.audio_context, "clip", 0.5, k)
  many = window(3).random_map(ex, np.random.default_rng(4))
  rng = np.random.default_rng(4)
  ones = [window(1).random_map(ex, rng) for _ in range(3)]
  for name, a in many.items():
    np.testing.assert_array_equal(a, np.stack([w[name] for w in ones]))
  assert not np.array_equal(many["motion"][0], many["motion"][1])

  _, by_kp = _normalized_clips(demo_dir)
  it = loader.make_train_iterator(cfg)
  b = next(it)
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == loader.batch_spec(cfg, 80)
  clips = [by_kp[row.tobytes()][0] for row in b["identity"][:, 69:]]
  assert clips[0::2] == clips[1::2] and len(set(clips)) == d.batch_size // 2
  with pytest.raises(UserError, match="windows_per_clip"):
    configlib.validate(_config(demo_dir, windows_per_clip=3))


def test_process_sharding(demo_dir):
  _, by_kp = _normalized_clips(demo_dir)
  n = loader.load_dataset_info(_config(demo_dir))["splits"]["train"]
  seen = []
  for p in range(2):
    it = loader.make_train_iterator(_config(demo_dir), p, 2)
    clips = [by_kp[row.tobytes()][0] for _ in range(n // 8) for row in next(it)["identity"][:, 69:]]
    assert len(set(clips)) == n // 2  # one epoch: every clip of this process once
    seen.append(set(clips))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))
  with pytest.raises(UserError, match="divisible"):
    configlib.validate(_config(demo_dir), process_count=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_and_determinism(demo_dir, workers):
  cfg = _config(demo_dir, worker_count=workers)
  iterators = [loader.make_train_iterator(cfg)]
  try:
    first = [next(iterators[0]) for _ in range(3)]
    state = json.loads(json.dumps(iterators[0].get_state()))
    rest = [next(iterators[0]) for _ in range(3)]
    iterators.append(loader.make_train_iterator(cfg))
    iterators[-1].set_state(state)  # resumes exactly where the first one was
    for want in rest:
      got = next(iterators[-1])
      assert all(np.array_equal(want[k], got[k]) for k in want)
    if workers:
      return
    iterators.append(loader.make_train_iterator(cfg))  # same seed, same batches
    for want in first:
      got = next(iterators[-1])
      assert all(np.array_equal(want[k], got[k]) for k in want)
    iterators.append(loader.make_train_iterator(_config(demo_dir, shuffle_seed=1)))
    assert not np.array_equal(first[0]["motion"], next(iterators[-1])["motion"])
  finally:
    for it in iterators:
      it.close()


def test_eval_clips(demo_dir):
  cfg = _config(demo_dir)
  clips = loader.load_eval_clips(cfg)
  assert len(clips) == cfg.eval.num_clips
  st = loader.dataset_stats(cfg)
  for c, ex in zip(clips, _train(demo_dir, "test")):
    n = min(ex["num_frames"], cfg.eval.max_frames)
    assert c["clip_id"] == ex["clip_id"].decode() and c["motion"].shape == (n, 69)
    assert c["audio"].shape == (n, 80) and c["identity"].shape == (132,) and c["kp"].shape == (21, 3)
    raw = stats_lib.motion_vector({k: v[:n] for k, v in ex["motion"].items()})
    np.testing.assert_allclose(motion.denormalize_motion(c["motion"], c["stats"]), raw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(c["identity"][:69], c["motion"][0])
    np.testing.assert_allclose(c["audio"], st.normalize_audio(ex["audio"]["features"][:n]))
    assert c["waveform"].shape == (n * 640,)


def test_user_errors(tmp_path, demo_dir):
  missing = tmp_path / "nowhere"
  cfg = _config(missing)
  cfg.data.name = "playmate_clips"
  with pytest.raises(UserError, match=str(missing)):
    loader.make_train_iterator(cfg)
  cfg.data.data_dir = ""
  with pytest.raises(UserError, match="data_dir is empty"):
    loader.load_dataset_info(cfg)
  cfg = _config(demo_dir)
  cfg.audio.n_mels = 40
  with pytest.raises(UserError, match="encoder 'logmel80"):
    loader.load_eval_clips(cfg)
  with pytest.raises(UserError, match="no split"):
    loader.load_eval_clips(_config(demo_dir), split="validation")
  with pytest.raises(UserError, match="window"):
    loader.make_train_iterator(_config(demo_dir, window=100_000))
