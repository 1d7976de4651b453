"""wav2vec2 / HuBERT: HF parity, torch-free conversion and its errors, 25 fps alignment, chunking, config."""

import json
import os
import tracemalloc
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from flax import nnx

from configs.stage1 import get_config
from playmate_jax.audio import get_encoder, load_audio, num_frames
from playmate_jax.audio import wav2vec2 as w2v
from playmate_jax.audio.wav2vec2_features import FeatureSettings, Wav2Vec2Encoder, random_encoder
from playmate_jax import shapes
from playmate_jax.convert.torch_io import save_torch_file
from playmate_jax.convert.wav2vec2 import convert_dir, load_encoder
from playmate_jax.errors import UserError

SR = 16000
_PARITY = os.environ.get("PLAYMATE_PARITY_DIR",
                         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                      "parity"))
_SETS = sorted(os.listdir(os.path.join(_PARITY, "wav2vec2"))) if os.path.isdir(os.path.join(_PARITY, "wav2vec2")) \
    else ["(none)"]


def rel_l2(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tiny_config(norm: str = "group") -> w2v.Wav2Vec2Config:
  """Real conv strides (20 ms frames, 400-sample field), tiny widths; "layer" = the large/stable layout."""
  return w2v.Wav2Vec2Config(conv_dim=(8,) * 7, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                            feat_extract_norm=norm, conv_bias=norm == "layer", do_stable_layer_norm=norm == "layer")


def with_params(model, fn):
  """A copy of `model` whose parameters are fn(path, value)."""
  graphdef, state = nnx.split(model)
  state = jax.tree_util.tree_map_with_path(lambda p, v: fn(jax.tree_util.keystr(p), v), state)
  return nnx.merge(graphdef, state)


def unchunked(enc: Wav2Vec2Encoder, model, wave: np.ndarray) -> np.ndarray:
  """The 25 fps features by definition: the whole padded waveform in one model call, frame pairs averaged."""
  rows, k = num_frames(len(wave)), enc.frames_per_row
  padded = np.zeros(enc.cfg.total_stride * (rows * k - 1) + enc.cfg.receptive_field, np.float32)
  padded[enc.left_pad:enc.left_pad + len(wave)] = wave
  hidden, last = _run(model, jnp.asarray(padded[None]))
  hidden = hidden[:-1] + [last]
  x = sum(hidden[i] for i in enc.layers) / len(enc.layers)
  return np.asarray(x.reshape(rows, k, -1).mean(1))


_run = nnx.jit(lambda model, wave: model(wave))


def encoder(model, cfg, **settings) -> Wav2Vec2Encoder:
  return Wav2Vec2Encoder.from_model(model, cfg, FeatureSettings(**settings))


@pytest.fixture(scope="module")
def models():
  return {norm: (tiny_config(norm), w2v.random_model(tiny_config(norm), seed=1)) for norm in ("group", "layer")}


@pytest.fixture(scope="module")
def speech():
  return (0.3 * np.random.default_rng(0).standard_normal(int(2.4 * SR))).astype(np.float32)


# --- parity with HF ------------------------------------------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("name", _SETS)
def test_parity_hf_reference(parity_dir, name, tmp_path):
  src = os.path.join(parity_dir, "wav2vec2", name)
  assert os.path.isdir(src), f"no wav2vec2 vector sets under {parity_dir}"
  convert_dir(src, tmp_path / "w")
  cfg, model = w2v.load_model(tmp_path / "w")
  ref = np.load(os.path.join(src, "reference.npz"))
  run = nnx.jit(lambda m, x, mask: m(x, mask))
  hidden, last = run(model, jnp.asarray(ref["input_values"]), None)
  n = len([k for k in ref.files if k.startswith("hidden_state_")])
  assert len(hidden) == n == cfg.num_hidden_layers + 1
  for i in range(n):
    assert rel_l2(hidden[i], ref[f"hidden_state_{i}"]) <= 1e-4, f"hidden_state_{i}"
  assert rel_l2(last, ref["last_hidden_state"]) <= 1e-4
  if "attention_mask" in ref.files:
    mask = w2v.hf_frame_mask(cfg, ref["attention_mask"], last.shape[1])
    assert int(mask.sum()) < mask.size  # the reference really pads
    _, masked = run(model, jnp.asarray(ref["input_values"]), mask)
    assert rel_l2(masked, ref["masked_last_hidden_state"]) <= 1e-4


@pytest.mark.parity
def test_parity_legacy_bin_equals_safetensors(parity_dir, tmp_path):
  base = os.path.join(parity_dir, "wav2vec2", "wav2vec2_base_style")
  legacy = base + "_ctc_legacy"
  if not os.path.isdir(legacy):
    pytest.skip(f"{legacy} not in this vector set")
  convert_dir(base, tmp_path / "a")
  convert_dir(legacy, tmp_path / "b")  # pytorch_model.bin, `wav2vec2.` prefix, weight_g/weight_v, lm_head
  (ca, pa), (cb, pb) = shapes.load_converted(tmp_path / "a", "wav2vec2"), shapes.load_converted(tmp_path / "b",
                                                                                               "wav2vec2")
  fa, fb = shapes.flatten(pa), shapes.flatten(pb)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_allclose(fa[k], fb[k], rtol=1e-6, atol=1e-7, err_msg=k)
  assert ca["digest"] == cb["digest"]


# --- conversion errors ---------------------------------------------------------------------------------------

def hf_folder(tmp_path, tensors, config=None, name="pytorch_model.bin"):
  """A HF-style folder from the tiny base-style vector set with the given tensors (and config)."""
  folder = tmp_path / "hf"
  folder.mkdir(exist_ok=True)
  with open(folder / "config.json", "w") as f:
    json.dump(config, f)
  if tensors is not None:
    save_torch_file(folder / name, tensors)
  return folder


def one_sentence(err: pytest.ExceptionInfo) -> str:
  msg = str(err.value)
  assert "\n" not in msg and msg.endswith(".") and "Traceback" not in msg
  return msg


def test_task_model_heads_are_ignored(tiny_hf, tmp_path):
  tensors, config = tiny_hf
  task = {f"wav2vec2.{k}": v for k, v in tensors.items()}
  task.update({"lm_head.weight": np.zeros((32, 16), np.float32), "lm_head.bias": np.zeros(32, np.float32),
               "quantizer.codevectors": np.zeros((1, 640, 128), np.float32),
               "project_q.weight": np.zeros((256, 256), np.float32), "wav2vec2.masked_spec_embed": np.zeros(16)})
  convert_dir(hf_folder(tmp_path, task, config), tmp_path / "task")
  _, params = shapes.load_converted(tmp_path / "task", "wav2vec2")
  assert "lm_head" not in params and params["encoder"]["layers"][1]["output"]["kernel"].shape == (32, 16)


@pytest.mark.parametrize("change, match", [
    ("remove", "encoder.layers.1.attention.k_proj.weight"),
    ("extra", "encoder.layers.0.attention.extra"),
    ("shape", "feature_projection.projection.weight"),
    ("no_weights", "no weights"),
    ("no_config", "no config.json"),
    ("model_type", "wavlm"),
])
def test_conversion_errors_are_one_sentence(tiny_hf, tmp_path, change, match):
  tensors, config = dict(tiny_hf[0]), dict(tiny_hf[1])
  if change == "remove":
    del tensors["encoder.layers.1.attention.k_proj.weight"]
  elif change == "extra":
    tensors["encoder.layers.0.attention.extra.weight"] = np.zeros(3, np.float32)
  elif change == "shape":
    tensors["feature_projection.projection.weight"] = tensors["feature_projection.projection.weight"].T.copy()
  elif change == "model_type":
    config["model_type"] = "wavlm"
  folder = hf_folder(tmp_path, None if change == "no_weights" else tensors, config)
  if change == "no_config":
    os.remove(folder / "config.json")
  with pytest.raises(UserError) as err:
    convert_dir(folder, tmp_path / "out")
  assert match in one_sentence(err)
  assert not os.path.exists(tmp_path / "out" / shapes.PARAMS_FILE)


def test_hubert_conv_pos_batch_norm_is_folded(tmp_path):
  """HuBERT's BatchNorm-before-positional-conv variant, against a direct numpy computation."""
  cfg = w2v.Wav2Vec2Config(model_type="hubert", conv_dim=(4,) * 2, conv_kernel=(10, 3), conv_stride=(5, 2),
                           hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                           num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, conv_pos_batch_norm=True)
  rng = np.random.default_rng(0)
  shapes = {"feature_extractor.conv_layers.0.conv.weight": (4, 1, 10), "feature_extractor.conv_layers.1.conv.weight":
            (4, 4, 3), "feature_extractor.conv_layers.0.layer_norm.weight": (4,),
            "feature_extractor.conv_layers.0.layer_norm.bias": (4,), "feature_projection.layer_norm.weight": (4,),
            "feature_projection.layer_norm.bias": (4,), "feature_projection.projection.weight": (8, 4),
            "feature_projection.projection.bias": (8,), "encoder.pos_conv_embed.conv.weight": (8, 4, 4),
            "encoder.pos_conv_embed.conv.bias": (8,), "encoder.layer_norm.weight": (8,),
            "encoder.layer_norm.bias": (8,)}
  for n in ("weight", "bias", "running_mean"):
    shapes[f"encoder.pos_conv_embed.batch_norm.{n}"] = (8,)
  for n in ("q", "k", "v", "out"):
    shapes[f"encoder.layers.0.attention.{n}_proj.weight"], shapes[f"encoder.layers.0.attention.{n}_proj.bias"] = \
        (8, 8), (8,)
  for n in ("layer_norm", "final_layer_norm"):
    shapes[f"encoder.layers.0.{n}.weight"] = shapes[f"encoder.layers.0.{n}.bias"] = (8,)
  shapes.update({"encoder.layers.0.feed_forward.intermediate_dense.weight": (8, 8),
                 "encoder.layers.0.feed_forward.intermediate_dense.bias": (8,),
                 "encoder.layers.0.feed_forward.output_dense.weight": (8, 8),
                 "encoder.layers.0.feed_forward.output_dense.bias": (8,)})
  tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  tensors["encoder.pos_conv_embed.batch_norm.running_var"] = rng.uniform(0.5, 2, 8).astype(np.float32)
  tensors["encoder.pos_conv_embed.batch_norm.num_batches_tracked"] = np.array(7, np.int64)
  hf = {k: v for k, v in cfg.to_dict().items()}
  convert_dir(hf_folder(tmp_path, {f"hubert.{k}": v for k, v in tensors.items()}, hf), tmp_path / "out")
  _, model = w2v.load_model(tmp_path / "out")
  x = rng.standard_normal((1, 11, 8)).astype(np.float32)
  got = np.asarray(model.encoder.pos_conv(jnp.asarray(x)))[0]
  t = {k.split("pos_conv_embed.")[-1]: v for k, v in tensors.items() if "pos_conv_embed" in k}
  bn = (x[0] - t["batch_norm.running_mean"]) / np.sqrt(t["batch_norm.running_var"] + 1e-5) \
      * t["batch_norm.weight"] + t["batch_norm.bias"]
  padded = np.pad(bn, ((2, 2), (0, 0)))
  want = np.zeros((11, 8))
  for o in range(8):  # groups of 4 channels, kernel 4, padding 2, last output dropped
    g = o // 4
    for j in range(11):
      want[j, o] = (padded[j:j + 4, 4 * g:4 * g + 4] * t["conv.weight"][o].T).sum() + t["conv.bias"][o]
  want = np.asarray(jax.nn.gelu(jnp.asarray(want, jnp.float32), approximate=False))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- 25 fps features -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 639, 640, 641, 16000, 16001, 41000])
def test_encode_gives_num_frames_rows(models, n):
  cfg, model = models["group"]
  enc = encoder(model, cfg, chunk_rows=20, overlap_rows=5, chunk_batch=2)
  feats = enc.encode(np.random.default_rng(n).standard_normal(n).astype(np.float32))
  assert feats.shape == (num_frames(n), cfg.hidden_size) and feats.dtype == np.float32
  assert np.isfinite(feats).all()


def test_frame_geometry():
  enc = encoder(None, tiny_config())  # the model is only loaded on the first encode
  assert (enc.cfg.total_stride, enc.cfg.receptive_field, enc.left_pad, enc.frames_per_row) == (320, 400, 40, 2)
  assert enc.cfg.num_frames(enc.window_samples) == 2 * enc.rows_per_window
  base = w2v.base_config()
  assert (base.total_stride, base.receptive_field) == (320, 400)


def test_rows_are_centred_on_video_frames(models):
  """With attention and positional conv switched off, row i depends exactly on samples [640i - 40, 640i + 680)."""
  cfg, model = models["layer"]
  local = with_params(model, lambda p, v: jnp.zeros_like(v) if ("attention" in p and "out" in p and "kernel" in p)
                      or ("pos_conv" in p and "kernel" in p) else v)
  enc = encoder(local, cfg, chunk_rows=10, overlap_rows=3)
  wave = (0.3 * np.random.default_rng(1).standard_normal(12 * 640)).astype(np.float32)
  base = enc.encode(wave)
  for x in (5 * 640 + 320, 5 * 640 + 10, 5 * 640 + 630, 0, 12 * 640 - 1):
    bumped = wave.copy()
    bumped[x] += 1.0
    changed = np.flatnonzero(np.abs(enc.encode(bumped) - base).max(1) > 1e-6)
    want = [i for i in range(12) if 640 * i - 40 <= x < 640 * i + 680]
    assert changed.tolist() == want, x


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_single_window_equals_unchunked(models, norm):
  cfg, model = models[norm]
  enc = encoder(model, cfg, chunk_rows=30, overlap_rows=5)  # 40 rows per window: 1.3 s runs padded and masked
  wave = (0.3 * np.random.default_rng(2).standard_normal(int(1.3 * SR) + 7)).astype(np.float32)
  assert rel_l2(enc.encode(wave), unchunked(enc, model, wave)) < 1e-5


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_chunked_equals_unchunked_at_and_away_from_borders_for_local_model(models, speech, norm):
  """Attention switched off: whatever each row depends on lies inside its window, so chunks are exact."""
  cfg, model = models[norm]
  local = with_params(model, lambda p, v: jnp.zeros_like(v) if "attention" in p and "out" in p and "kernel" in p
                      else v)
  enc = encoder(local, cfg, chunk_rows=10, overlap_rows=5, chunk_batch=2)  # 60 rows: 6 windows, 3 calls
  a, b = enc.encode(speech), unchunked(enc, local, speech)
  err = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
  assert err.max() < 1e-5


def test_chunk_windows_are_exact_model_runs(models, speech):
  """With global attention each kept row is the model's output on its own window (shifted inwards at the ends)."""
  cfg, model = models["layer"]
  enc = encoder(model, cfg, chunk_rows=10, overlap_rows=5, chunk_batch=4)
  feats = enc.encode(speech)
  plan = enc._plan(len(feats))
  assert [p[0] for p in plan] == [0, 5, 15, 25, 35, 40]
  for first, keep_from, keep_to, _ in plan:
    start = 640 * first - enc.left_pad  # the window's samples, zeros outside the audio
    window = np.zeros(enc.window_samples, np.float32)
    lo, hi = max(start, 0), min(start + enc.window_samples, len(speech))
    window[lo - start:hi - start] = speech[lo:hi]
    _, last = _run(model, jnp.asarray(window[None]))
    ref = np.asarray(last[0].reshape(enc.rows_per_window, 2, -1).mean(1))
    np.testing.assert_allclose(feats[keep_from:keep_to], ref[keep_from - first:keep_to - first], rtol=1e-4,
                               atol=1e-5)


def test_chunked_close_to_unchunked_with_global_attention(speech):
  """HF-like initialization (Linear weights N(0, 0.02)): diffuse attention, the worst case for truncation."""
  cfg = tiny_config("group")
  model = with_params(w2v.random_model(cfg, seed=3), lambda p, v: 0.02 * np.random.default_rng(
      zlib.crc32(p.encode())).standard_normal(v.shape, np.float32) if "layers" in p and "kernel" in p else v)
  enc = encoder(model, cfg, chunk_rows=10, overlap_rows=5, chunk_batch=2)
  a, b = enc.encode(speech), unchunked(enc, model, speech)
  err = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
  assert err.max() < 2e-2


def test_one_compile_and_flat_memory_for_long_audio(models):
  """The hour-of-audio property, cheaply: one trace per window shape, and nothing grows with the audio length."""
  cfg, model = models["group"]
  enc = encoder(model, cfg, chunk_rows=4, overlap_rows=2, chunk_batch=3)
  rng = np.random.default_rng(4)
  peaks, live = {}, {}
  enc.encode(rng.standard_normal(40 * 640).astype(np.float32))  # compile (10 windows: calls of 3, last padded)
  for windows in (12, 120):
    wave = (0.3 * rng.standard_normal(windows * 4 * 640)).astype(np.float32)
    tracemalloc.start()
    counts = []
    for _ in enc.iter_rows(wave):
      counts.append((len(jax.live_arrays()), sum(x.nbytes for x in jax.live_arrays())))
    peaks[windows] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    live[windows] = max(counts)
  assert enc.trace_counts == {"chunk": 1, "moments": 1}
  assert live[120] == live[12]  # device buffers: the same few per call, whatever the length
  # Host: beyond the caller's waveform, only the buffers of the calls in flight (which of them are still alive
  # at the peak depends on timing); a copy of the audio would add 1.1 MB, its features 27 KB.
  in_flight = 2 * enc.settings.chunk_batch * enc.window_samples * 4
  assert peaks[120] < peaks[12] + in_flight + 16 * 1024


def test_plan_covers_an_hour_once():
  enc = encoder(None, w2v.base_config())
  for rows in (90_000, 90_001, 601, 600, 599, 1):
    plan = enc._plan(rows)
    kept = np.zeros(rows, int)
    for first, keep_from, keep_to, valid in plan:
      assert 0 <= first <= keep_from < keep_to <= first + enc.rows_per_window
      assert valid == min(rows, enc.rows_per_window)
      kept[keep_from:keep_to] += 1
    assert (kept == 1).all()
  assert len(enc._plan(90_000)) == 180  # 20 s windows for an hour at 25 fps


def test_layers_mean_and_bfloat16(models, speech):
  cfg, model = models["layer"]
  f32 = encoder(model, cfg, layers=(0, 1, -1), layer_reduce="mean")
  ref = unchunked(f32, model, speech)
  assert rel_l2(f32.encode(speech), ref) < 1e-5
  bf16_model = w2v.model_from_params(cfg, nnx.to_pure_dict(nnx.state(model, nnx.Param)), jnp.bfloat16)
  bf16 = encoder(bf16_model, cfg, layers=(0, 1, -1), layer_reduce="mean", dtype="bfloat16")
  assert rel_l2(bf16.encode(speech), ref) < 5e-2
  assert f32.name != bf16.name


# --- files, config and the dataset check ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_hf(models):
  """HF-layout tensors and config.json of the tiny group-norm model (weight norm as weight_g / weight_v)."""
  cfg, model = models["group"]
  params = shapes.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  d = cfg.hidden_size
  t = {}
  for i in range(7):
    t[f"feature_extractor.conv_layers.{i}.conv.weight"] = np.moveaxis(
        params[f"feature_extractor/conv_layers/{i}/conv/kernel"], (-1, -2), (0, 1))
  for hf, ours in (("feature_extractor.conv_layers.0.layer_norm", "feature_extractor/conv_layers/0/norm"),
                   ("feature_projection.layer_norm", "feature_projection/norm"),
                   ("encoder.layer_norm", "encoder/norm")):
    t[f"{hf}.weight"], t[f"{hf}.bias"] = params[f"{ours}/scale"], params[f"{ours}/bias"]
  t["feature_projection.projection.weight"] = params["feature_projection/projection/kernel"].T
  t["feature_projection.projection.bias"] = params["feature_projection/projection/bias"]
  v = np.moveaxis(params["encoder/pos_conv/conv/kernel"], (-1, -2), (0, 1))
  t["encoder.pos_conv_embed.conv.weight_v"] = v
  t["encoder.pos_conv_embed.conv.weight_g"] = np.sqrt(np.square(v).sum((0, 1), keepdims=True))
  t["encoder.pos_conv_embed.conv.bias"] = params["encoder/pos_conv/conv/bias"]
  for i in range(cfg.num_hidden_layers):
    p, q = f"encoder.layers.{i}", f"encoder/layers/{i}"
    for j, n in enumerate("qkv"):
      t[f"{p}.attention.{n}_proj.weight"] = params[f"{q}/attention/qkv/kernel"][:, j * d:(j + 1) * d].T
      t[f"{p}.attention.{n}_proj.bias"] = params[f"{q}/attention/qkv/bias"][j * d:(j + 1) * d]
    for hf, ours in (("attention.out_proj", "attention/out"), ("feed_forward.intermediate_dense", "intermediate"),
                     ("feed_forward.output_dense", "output")):
      t[f"{p}.{hf}.weight"], t[f"{p}.{hf}.bias"] = params[f"{q}/{ours}/kernel"].T, params[f"{q}/{ours}/bias"]
    for hf, ours in (("layer_norm", "norm"), ("final_layer_norm", "final_norm")):
      t[f"{p}.{hf}.weight"], t[f"{p}.{hf}.bias"] = params[f"{q}/{ours}/scale"], params[f"{q}/{ours}/bias"]
  return {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}, cfg.to_dict()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_hf):
  """A converted folder of the tiny group-norm model (written as an HF folder with do_normalize, then converted)."""
  root = tmp_path_factory.mktemp("w2v")
  hf_dir = hf_folder(root, *tiny_hf)
  with open(hf_dir / "preprocessor_config.json", "w") as f:
    json.dump({"do_normalize": True, "sampling_rate": 16000}, f)
  convert_dir(hf_dir, root / "tiny-w2v")
  return str(root / "tiny-w2v")


def audio_config(**kw):
  c = get_config().audio
  c.unlock()
  c.encoder = "wav2vec2"
  c.chunk_seconds, c.overlap_seconds, c.chunk_batch = 0.8, 0.2, 2
  for k, v in kw.items():
    c[k] = v
  return c


def test_config_selects_the_converted_encoder(converted, models, speech):
  enc = get_encoder(audio_config(weights=converted))
  cfg, model = models["group"]
  assert enc.feature_dim == cfg.hidden_size and enc.do_normalize
  assert enc.name.startswith("wav2vec2-tiny-w2v.") and "layers2-single" in enc.name and "chunk20ctx5" in enc.name
  mean, std = speech.mean(dtype=np.float64), speech.std(dtype=np.float64)
  normalized = ((speech - mean) / np.sqrt(std ** 2 + 1e-7)).astype(np.float32)
  direct = encoder(model, cfg, chunk_rows=20, overlap_rows=5, chunk_batch=2)
  np.testing.assert_allclose(enc.encode(speech), direct.encode(normalized), rtol=1e-4, atol=1e-5)
  assert load_encoder(converted, chunk_rows=20, overlap_rows=5, chunk_batch=2).name == enc.name
  names = {get_encoder(audio_config(weights=converted, **kw)).name for kw in (
      {}, {"layers": "1"}, {"layers": "0,2", "layer_reduce": "mean"}, {"chunk_seconds": 10.0},
      {"overlap_seconds": 1.0}, {"dtype": "bfloat16"}, {"layers": "2"}, {"layers": "-3,-1", "layer_reduce": "mean"})}
  assert len(names) == 6  # "-1" is "2" in a 2-layer model: same features, same name


@pytest.mark.parametrize("kw, match", [
    ({"weights": ""}, "config.audio.weights is empty"),
    ({"weights": "/nonexistent/w2v"}, "not a converted"),
    ({"layers": "last"}, "config.audio.layers"),
    ({"chunk_seconds": 0.01}, "chunk_seconds"),
    ({"layers": "7"}, "hidden states 0..2"),
    ({"layers": "1,2"}, "layer_reduce"),
    ({"layer_reduce": "max"}, "layer_reduce"),
    ({"dtype": "float16"}, "config.audio.dtype"),
    ({"sample_rate": 22050}, "16000"),
])
def test_config_errors_are_one_sentence(converted, kw, match):
  kw = {"weights": converted, **kw}
  with pytest.raises(UserError) as err:
    get_encoder(audio_config(**kw))
  assert match in one_sentence(err)


def test_dataset_of_another_encoder_is_one_sentence(converted, tmp_path):
  from playmate_jax.data import builder, loader
  path = builder.version_dir(tmp_path)
  os.makedirs(path)
  with open(os.path.join(path, "dataset_info.json"), "w") as f:
    json.dump({}, f)
  with open(os.path.join(path, "metadata.json"), "w") as f:
    json.dump({"audio_encoder": "logmel80-sr16000-hop640-n1024-f55-7600", "feature_dim": 80}, f)
  config = get_config()
  with config.unlocked():
    config.data.data_dir = str(tmp_path)
    config.audio.encoder, config.audio.weights = "wav2vec2", converted
  with pytest.raises(UserError) as err:
    loader.open_dataset(config)
  msg = one_sentence(err)
  assert "logmel80" in msg and get_encoder(config.audio).name in msg


def test_audio_files(converted, tmp_path):
  enc = get_encoder(audio_config(weights=converted))
  rng = np.random.default_rng(5)
  cases = {"silent.wav": (np.zeros(SR, np.float32), SR),
           "stereo_44k.wav": (0.2 * rng.standard_normal((int(1.3 * 44100), 2)).astype(np.float32), 44100),
           "mono_8k.flac": (0.2 * rng.standard_normal(8000 + 123).astype(np.float32), 8000)}
  for name, (data, rate) in cases.items():
    soundfile.write(tmp_path / name, data, rate)
    wave = load_audio(tmp_path / name)
    feats = enc.encode(wave)
    assert feats.shape == (num_frames(len(wave)), enc.feature_dim) and np.isfinite(feats).all(), name
  (tmp_path / "empty.wav").write_bytes(b"")
  (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + rng.bytes(2000))
  for name in ("empty.wav", "corrupt.wav"):
    with pytest.raises(UserError) as err:
      enc.encode(load_audio(tmp_path / name))
    assert name in one_sentence(err)


def test_random_base_encoder_is_base_sized():
  enc = random_encoder(dtype="float32")  # weights are only made on the first encode
  assert enc.feature_dim == 768 and enc.name.startswith("wav2vec2-random0") and enc.rows_per_window == 600
  model = w2v.abstract_model(enc.cfg)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert 94_000_000 < n < 95_500_000  # wav2vec2-base: 94.4 M parameters
