"""wav2vec2 / HuBERT: a Hugging Face model folder -> converted weights for playmate_jax.audio.wav2vec2.

Reads `config.json`, the weights (`model.safetensors`, else `pytorch_model.bin`, or either one's sharded
`.index.json`) and, when present, `preprocessor_config.json` (`do_normalize`, default true as in HF's
Wav2Vec2FeatureExtractor), with no PyTorch. Accepted layouts:
- bare models (`Wav2Vec2Model`, `HubertModel`: keys `feature_extractor.*`, `encoder.*`, ...) and task models whose
  encoder keys carry the `wav2vec2.` / `hubert.` prefix; the task heads beside it (lm_head, quantizer,
  project_q, project_hid, projector, classifier, layer_weights, tdnn, feature_extractor of x-vector models, ...)
  and `masked_spec_embed` (SpecAugment's training-time vector) are skipped by name;
- the positional convolution's weight norm saved either as `weight_g` / `weight_v` (torch.nn.utils.weight_norm)
  or as `parametrizations.weight.original0` / `original1` (torch.nn.utils.parametrizations.weight_norm), folded
  here into one kernel: w = g * v / ||v||, the norm taken over all axes but the kernel axis (HF's dim=2); a
  plain `weight` is taken as is. HuBERT's `conv_pos_batch_norm` BatchNorm becomes a per-channel scale/shift.
Every other tensor must be used exactly once with the shape config.json implies, or conversion fails with one
sentence naming the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from playmate_jax.audio import wav2vec2 as w2v
from playmate_jax.audio.wav2vec2_features import FeatureSettings, Wav2Vec2Encoder
from playmate_jax import shapes
from playmate_jax.convert import common
from playmate_jax.convert.torch_io import load_safetensors, load_torch_file
from playmate_jax.errors import UserError

BASE_PREFIXES = ("wav2vec2.", "hubert.")
HEADS = ("lm_head", "quantizer", "project_q", "project_hid", "projector", "classifier", "layer_weights", "tdnn",
         "feature_extractor", "objective", "label_embeddings_concat", "final_proj")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_json(path: str, what: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} could not be read as JSON ({type(e).__name__}); download the model's {what} again.") \
        from None
  if not isinstance(data, dict):
    raise UserError(f"{path} is not a JSON object; download the model's {what} again.")
  return data


def _load_weights(path: str) -> dict[str, np.ndarray]:
  try:
    tensors = load_safetensors(path) if path.endswith(".safetensors") else load_torch_file(path)
  except UserError:
    raise
  except Exception as e:  # a truncated or foreign file: the readers raise many unrelated types
    raise UserError(f"{path} could not be read as a weights file ({type(e).__name__}); download it again.") \
        from None
  if isinstance(tensors, Mapping) and "state_dict" in tensors and isinstance(tensors["state_dict"], Mapping):
    tensors = tensors["state_dict"]
  if not isinstance(tensors, Mapping):
    raise UserError(f"{path} does not hold a state dict; point --src to a Hugging Face model folder.")
  return dict(tensors)


def read_hf_folder(src: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], str, bool]:
  """(config.json, tensors, weights file, do_normalize) of a HF wav2vec2/HuBERT model folder."""
  src = os.fspath(src)
  if not os.path.isdir(src):
    raise UserError(f"{src} is not a folder; pass --src a Hugging Face model folder (config.json plus "
                    "model.safetensors or pytorch_model.bin).")
  config_path = os.path.join(src, "config.json")
  if not os.path.isfile(config_path):
    raise UserError(f"{src} has no config.json; pass --src a Hugging Face model folder (config.json plus "
                    "model.safetensors or pytorch_model.bin).")
  hf_config = _read_json(config_path, "config.json")
  do_normalize = True
  pre_path = os.path.join(src, "preprocessor_config.json")
  if os.path.isfile(pre_path):
    pre = _read_json(pre_path, "preprocessor_config.json")
    do_normalize = bool(pre.get("do_normalize", True))
    if int(pre.get("sampling_rate", w2v.SAMPLE_RATE)) != w2v.SAMPLE_RATE:
      raise UserError(f"{pre_path} gives sampling_rate {pre['sampling_rate']}; only {w2v.SAMPLE_RATE} Hz "
                      "wav2vec2/HuBERT models are supported.")
  for name in WEIGHT_FILES:
    path = os.path.join(src, name)
    if os.path.isfile(path):
      return hf_config, _load_weights(path), path, do_normalize
    index = path + ".index.json"
    if os.path.isfile(index):
      shards = sorted(set(_read_json(index, "weights index").get("weight_map", {}).values()))
      tensors = {}
      for shard in shards:
        shard_path = os.path.join(src, shard)
        if not os.path.isfile(shard_path):
          raise UserError(f"{index} names shard {shard}, which is missing from {src}; download it.")
        tensors.update(_load_weights(shard_path))
      return hf_config, tensors, index, do_normalize
  raise UserError(f"{src} has config.json but no weights (model.safetensors or pytorch_model.bin); download "
                  "the weights into that folder.")


def _split_heads(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """(encoder tensors with the base-model prefix removed, names of the task-head tensors left beside it)."""
  prefix = next((p for p in BASE_PREFIXES if any(k.startswith(p) for k in tensors)), None)
  encoder, heads = {}, []
  for key, value in tensors.items():
    if prefix and key.startswith(prefix):
      encoder[key[len(prefix):]] = value
    elif key.split(".")[0] in HEADS and (prefix or key.split(".")[0] != "feature_extractor"):
      heads.append(key)
    else:
      encoder[key] = value
  return encoder, heads


def _weight_normed(src: common.SourceDict, p: str, shape: tuple[int, ...]) -> np.ndarray:
  """The positional conv's effective weight [O, I/groups, K] from any of its saved forms."""
  k = shape[-1]
  for g_key, v_key in ((f"{p}.parametrizations.weight.original0", f"{p}.parametrizations.weight.original1"),
                       (f"{p}.weight_g", f"{p}.weight_v")):
    if g_key in src or v_key in src:
      g = src.take(g_key, (1, 1, k)).astype(np.float64)
      v = src.take(v_key, shape).astype(np.float64)
      return (g * v / np.sqrt(np.square(v).sum(axis=(0, 1), keepdims=True))).astype(np.float32)
  if f"{p}.weight" in src:
    return src.take(f"{p}.weight", shape)
  return src.take(f"{p}.parametrizations.weight.original1", shape)  # fails: names the weight it needs


def convert_state_dict(tensors: Mapping[str, np.ndarray], cfg: w2v.Wav2Vec2Config, file: str) -> dict[str, Any]:
  """HF state dict (any accepted layout) -> nested params of playmate_jax.audio.wav2vec2.Wav2Vec2Model."""
  encoder_tensors, _heads = _split_heads(tensors)
  src = common.SourceDict(encoder_tensors, file)
  src.skip("masked_spec_embed")

  conv_layers = {}
  for i, (c_out, k) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel)):
    c_in = cfg.conv_dim[i - 1] if i else 1
    p = f"feature_extractor.conv_layers.{i}"
    layer = {"conv": common.take_conv(src, f"{p}.conv", c_in, c_out, k, ndim=1, bias=cfg.conv_bias)}
    if cfg.feat_extract_norm == "layer" or i == 0:
      layer["norm"] = common.take_layer_norm(src, f"{p}.layer_norm", c_out)
    conv_layers[i] = layer

  d, c_last = cfg.hidden_size, cfg.conv_dim[-1]
  projection = {"projection": common.take_linear(src, "feature_projection.projection", c_last, d)}
  if cfg.feat_proj_layer_norm:
    projection["norm"] = common.take_layer_norm(src, "feature_projection.layer_norm", c_last)

  p = "encoder.pos_conv_embed"
  k, groups = cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
  pos_conv = {"conv": {"kernel": common.conv_kernel(_weight_normed(src, f"{p}.conv", (d, d // groups, k))),
                       "bias": src.take(f"{p}.conv.bias", (d,))}}
  if cfg.conv_pos_batch_norm:
    pos_conv["in_scale"], pos_conv["in_shift"] = common.take_batchnorm(src, f"{p}.batch_norm", d)

  layers = {}
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layers.{i}"
    q, kk, v = (common.take_linear(src, f"{p}.attention.{n}_proj", d, d) for n in ("q", "k", "v"))
    layers[i] = {
        "attention": {"qkv": {"kernel": np.concatenate([q["kernel"], kk["kernel"], v["kernel"]], axis=1),
                              "bias": np.concatenate([q["bias"], kk["bias"], v["bias"]])},
                      "out": common.take_linear(src, f"{p}.attention.out_proj", d, d)},
        "norm": common.take_layer_norm(src, f"{p}.layer_norm", d),
        "intermediate": common.take_linear(src, f"{p}.feed_forward.intermediate_dense", d, cfg.intermediate_size),
        "output": common.take_linear(src, f"{p}.feed_forward.output_dense", cfg.intermediate_size, d),
        "final_norm": common.take_layer_norm(src, f"{p}.final_layer_norm", d),
    }
  encoder = {"pos_conv": pos_conv, "norm": common.take_layer_norm(src, "encoder.layer_norm", d), "layers": layers}
  src.finish()
  return {"feature_extractor": {"conv_layers": conv_layers}, "feature_projection": projection, "encoder": encoder}


def model_config(hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], path: str) -> w2v.Wav2Vec2Config:
  """The architecture from config.json (`path`); a value of the wrong type is one sentence naming the file."""
  if "feat_proj_layer_norm" not in hf_config:  # HuBERT configs older than the option: the weights say
    hf_config = dict(hf_config, feat_proj_layer_norm=any(
        k.endswith("feature_projection.layer_norm.weight") for k in tensors))
  for f in dataclasses.fields(w2v.Wav2Vec2Config):
    value = hf_config.get(f.name)
    if value is not None and not _fits(value, f.default):
      raise UserError(f"{path} gives {f.name} = {json.dumps(value)[:40]}, not {_KINDS[type(f.default)]}; download "
                      "the model's config.json again.")
  try:
    return w2v.Wav2Vec2Config.from_dict(hf_config, path)
  except (TypeError, ValueError, ZeroDivisionError) as e:  # sizes that fit no model (a zero, a negative number)
    raise UserError(f"{path} gives sizes that fit no model ({type(e).__name__}); download the model's config.json "
                    "again.") from None


_KINDS = {bool: "true or false", int: "a positive whole number", float: "a positive number", str: "a string",
          tuple: "a list of positive whole numbers"}


def _fits(value: Any, default: Any) -> bool:
  """Whether a config.json value has the kind of the field's default (every size and count positive)."""
  positive_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return positive_int(value)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
  if isinstance(default, tuple):
    return isinstance(value, list) and bool(value) and all(positive_int(v) for v in value)
  return isinstance(value, type(default))


def convert_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Converts the HF model folder `src` into the converted-weights folder `dst` (kind "wav2vec2"; checked first,
  written whole: common.publish)."""
  common.check_destination(dst)
  hf_config, tensors, file, do_normalize = read_hf_folder(src)
  cfg = model_config(hf_config, tensors, os.path.join(os.fspath(src), "config.json"))
  params = convert_state_dict(tensors, cfg, file)
  shapes.check_covers(w2v.expected_params(cfg), params, file)
  record = {"model": cfg.to_dict(), "do_normalize": do_normalize}
  record["digest"] = w2v.params_digest(record, params)
  common.publish(dst, w2v.KIND, record, params, os.fspath(src))


def load_encoder(path: str | os.PathLike, **settings) -> Wav2Vec2Encoder:
  """The 25 fps feature encoder over a converted folder; settings as in FeatureSettings (layers=(-1,), ...)."""
  import ml_collections
  s = FeatureSettings(**settings)
  c = ml_collections.ConfigDict(dict(
      encoder="wav2vec2", weights=os.fspath(path), layers=",".join(str(i) for i in s.layers),
      layer_reduce=s.layer_reduce, chunk_seconds=s.chunk_rows / s.fps, overlap_seconds=s.overlap_rows / s.fps,
      chunk_batch=s.chunk_batch, dtype=s.dtype, sample_rate=s.sample_rate, fps=s.fps))
  return Wav2Vec2Encoder(c)
