"""Configs: load `configs/NAME.py[:variant]`, apply `--config.a.b=value` overrides, upgrade a saved config to the
current fields, validate, save as JSON.

This module owns the config: `upgrade` is the one place that knows what a saved config without a newer field
meant, and `validate` holds every check of the values, so the modules that read a config trust it (they neither
re-check it nor fall back to defaults). Every config goes through both: the one a training run starts from
(Trainer), and every saved one read back (`load_saved`, `from_saved`: a checkpoint's config, the workdir's
config.json). Every mistake here is a `UserError` with one sentence naming the file or key and the fix.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Mapping

import ml_collections

from playmate_jax.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")       # config.model.dtype
ATTENTION_KERNELS = ("auto", "xla", "cudnn")      # config.model.attention
SCHEDULES = ("cosine", "linear")                  # config.diffusion.schedule
SOURCE_EXPRESSIONS = ("clip", "reference")        # config.data.source_expression
DATASETS = ("demo", "playmate_clips")             # config.data.name


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py` or `path/to/config.py:variant` -> the locked ConfigDict of its get_config(variant)."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"Config file {path} does not exist; pass --config=configs/stage1.py (optionally :demo or :tiny).")
  module_spec = importlib.util.spec_from_file_location(f"_playmate_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UserError(f"Config file {path} has no get_config(arg) function; start from configs/stage1.py.")
  try:
    config = module.get_config(variant)
  except ValueError as e:
    raise UserError(f"{path}: {e}") from None
  config.lock()
  return config


def _coerce(key: str, text: str, current):
  """Parses `text` to the type of the field's current value."""
  if isinstance(current, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise UserError(f"Config key {key} takes true or false, not {text!r}.")
  if isinstance(current, (int, float)):
    try:
      value = ast.literal_eval(text.replace("_", ""))
    except (ValueError, SyntaxError):
      value = None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (
        isinstance(current, int) and not float(value).is_integer()):
      kind = "an integer" if isinstance(current, int) else "a number"
      raise UserError(f"Config key {key} takes {kind}, not {text!r}.")
    return type(current)(value)
  if isinstance(current, str) or current is None:
    return text
  raise UserError(f"Config key {key} cannot be set from the command line.")


def parse_overrides(args: list[str]) -> dict[str, str]:
  """["--config.train.num_steps=5", ...] -> {"train.num_steps": "5"}; anything else is a UserError."""
  overrides = {}
  for item in args:
    key, eq, value = item.partition("=")
    if not key.startswith("--config.") or not eq:
      raise UserError(f"Unrecognized argument {item!r}; config overrides look like --config.train.num_steps=1000.")
    overrides[key[len("--config."):]] = value
  return overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
  """Sets each dotted key (e.g. "train.num_steps") to its value; an unknown key is a UserError."""
  for key, text in overrides.items():
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(parts[:i]) or "the config"
        known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
        raise UserError(f"Unknown config key {key}: {where} has no field {part!r} (known: {known}).")
      if i < len(parts) - 1:
        node = node[part]
    with config.unlocked():
      node[parts[-1]] = _coerce(key, text, node[parts[-1]])
  return config


# Fields that a config saved by an earlier version of the project may lack, each with the value such a config means
# (what the code it was trained with did without the field). A config from configs/*.py has every one of them.
ADDED_FIELDS = {
    # Live models (a bounded audio look-ahead) came later: every earlier model is offline.
    "model.audio_lookahead": -1,
    # The wav2vec2 / HuBERT encoder's settings: a config without them uses the mel encoder, which reads none.
    "audio.weights": "", "audio.layers": "-1", "audio.layer_reduce": "single", "audio.chunk_seconds": 20.0,
    "audio.overlap_seconds": 2.0, "audio.chunk_batch": 8, "audio.dtype": "float32",
    # Windows per sampler call: any count samples what one call per window does; 8 is the configs' setting.
    "sample.windows_per_call": 8,
    # Grain's default ReadOptions, which the loader uses when the config does not set them.
    "data.read_threads": 16, "data.read_buffer": 500,
    # The source frame's own expression and no extra sequence starts (what configs/stage1.py sets).
    "data.source_expression": "clip", "data.start_prob": 0.0,
    # XLA's einsums and cuDNN's fused kernel compute the same attention; "auto" picks one for the device.
    "model.attention": "auto",
    # One window per clip read.
    "data.windows_per_clip": 1,
    # The training-speed settings came later: earlier runs kept a float32 residual stream, drew each dropout mask
    # element from a 32-bit number and kept every activation for the backward pass.
    "model.residual_dtype": "float32", "model.dropout_bits": 32, "model.remat": False, "optim.flatten": False,
}
ADDED_STAGE2_FIELDS = {
    # pipelines/evaluate.py's emotion classifier: train_classifier's own settings, on every labelled train clip.
    "eval.classifier.steps": 500, "eval.classifier.lr": 0.5, "eval.classifier.l2": 1e-3,
    "eval.classifier.max_clips": None,
}


def upgrade(config: ml_collections.ConfigDict | Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Fills, in place, every field of ADDED_FIELDS (and in stage 2 ADDED_STAGE2_FIELDS) that the config lacks, with
  the value that config means, and returns it (a dict, as read from JSON, becomes a ConfigDict); a config that has
  them all, as one from configs/*.py, is returned unchanged. Fields are only added: values are never changed."""
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(dict(config))
  added = dict(ADDED_FIELDS)
  if config.get("stage") == 2:
    added.update(ADDED_STAGE2_FIELDS)
  with config.unlocked():
    for key, value in added.items():
      *parents, name = key.split(".")
      node = config
      for part in parents:
        if part not in node:
          node[part] = ml_collections.ConfigDict()
        node = node[part]
      if name not in node:
        node[name] = value
  return config


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None, process_count: int = 1) -> None:
  """Rejects values that cannot work, before anything expensive starts; every check of a config's values is here.

  num_devices: the devices a training step splits the global batch over. None for a config that does not train
  in this process (a saved run's, read back to sample, evaluate or start stage 2 from: the device count of this
  process says nothing about it, and a checkpoint restores on any count), which skips that one check.
  process_count: the processes that share the global batch (1 for a saved run's config).
  Checks against facts outside the config stay where those facts are read: the dataset (its audio encoder, splits
  and clip lengths: data.loader), a workdir's earlier run and stage 2's stage-1 run (train.trainer), and the audio
  encoder's own settings (the encoder, when it is made).
  """
  def need(ok: bool, message: str):
    if not ok:
      raise UserError(message)

  need(config.stage in (1, 2), f"config.stage={config.stage} is unknown; use configs/stage1.py or configs/stage2.py.")
  d, m = config.data, config.model
  need(d.name in DATASETS,
       f"config.data.name is {d.name!r}; use 'demo' or 'playmate_clips' (a preprocessed dataset in data.data_dir).")
  need(d.window >= 1 and d.prev_frames >= 0 and d.audio_context >= 0,
       f"config.data.window={d.window}, data.prev_frames={d.prev_frames} and data.audio_context={d.audio_context} "
       "must be >= 1, >= 0 and >= 0; fix them in the config.")
  if num_devices is None:
    need(d.batch_size > 0, f"config.data.batch_size={d.batch_size} must be positive.")
  else:
    need(d.batch_size > 0 and d.batch_size % num_devices == 0,
         f"config.data.batch_size={d.batch_size} must be a positive multiple of the {num_devices} devices in use.")
  need(d.batch_size % process_count == 0,
       f"config.data.batch_size={d.batch_size} must be divisible by the {process_count} processes in use.")
  per_process = d.batch_size // process_count
  need(d.windows_per_clip >= 1 and per_process % d.windows_per_clip == 0,
       f"config.data.windows_per_clip={d.windows_per_clip} must be >= 1 and divide the per-process batch "
       f"({per_process}); change config.data.windows_per_clip.")
  need(d.worker_count >= 0 and d.read_threads >= 0 and d.read_buffer >= 0,
       "config.data.worker_count, data.read_threads and data.read_buffer must be >= 0 (0: none).")
  need(d.source_expression in SOURCE_EXPRESSIONS,
       f"config.data.source_expression={d.source_expression!r} is unknown; use 'clip' (the source frame's own "
       "expression) or 'reference' (the speaker's reference expression).")
  need(0.0 <= d.start_prob <= 1.0, f"config.data.start_prob={d.start_prob} must be in [0, 1].")

  need(m.num_heads >= 1 and m.dim >= 1 and m.dim % m.num_heads == 0,
       f"config.model.dim={m.dim} is not divisible by config.model.num_heads={m.num_heads}; choose a num_heads "
       "that divides dim.")
  need(m.conv_kernel >= 1 and m.conv_kernel % 2 == 1,
       f"config.model.conv_kernel={m.conv_kernel} must be odd and positive (a convolution centred on each frame).")
  need(m.dtype in DTYPES, f"config.model.dtype={m.dtype!r} is not supported; use one of {', '.join(DTYPES)}.")
  need(-1 <= m.audio_lookahead <= config.data.audio_context,
       f"config.model.audio_lookahead={m.audio_lookahead} must be -1 (offline) or 0 to config.data.audio_context "
       f"({config.data.audio_context}), the audio frames each window carries past its end.")
  need(m.audio_lookahead < 0 or config.audio.encoder == "mel",
       "A live model (config.model.audio_lookahead >= 0) needs config.audio.encoder='mel': wav2vec2 and HuBERT "
       "attend over whole chunks of the recording, so their features have no bounded look-ahead.")
  need(m.residual_dtype in ("float32", "bfloat16"),
       f"config.model.residual_dtype={m.residual_dtype!r} is not supported; use float32 or bfloat16.")
  need(m.dropout_bits in (8, 32), f"config.model.dropout_bits={m.dropout_bits} must be 8 or 32.")
  need(m.attention in ATTENTION_KERNELS,
       f"config.model.attention={m.attention!r} is unknown; use one of {', '.join(ATTENTION_KERNELS)}.")
  need(0.0 <= m.audio_drop_prob < 1.0, f"config.model.audio_drop_prob={m.audio_drop_prob} must be in [0, 1).")

  diffusion = config.diffusion
  need(diffusion.num_timesteps >= 1, f"config.diffusion.num_timesteps={diffusion.num_timesteps} must be at least 1.")
  need(diffusion.schedule in SCHEDULES,
       f"config.diffusion.schedule={diffusion.schedule!r} is unknown; use 'cosine' or 'linear'.")
  need(diffusion.schedule != "linear" or 0.0 < diffusion.beta_start <= diffusion.beta_end < 1.0,
       "config.diffusion.beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1.")

  s = config.sample
  need(1 <= s.ddim_steps <= diffusion.num_timesteps,
       f"config.sample.ddim_steps={s.ddim_steps} must be between 1 and "
       f"config.diffusion.num_timesteps={diffusion.num_timesteps}.")
  need(s.eta >= 0, f"config.sample.eta={s.eta} must be >= 0 (0: deterministic DDIM, 1: DDPM-like).")
  need(s.windows_per_call >= 1, f"config.sample.windows_per_call={s.windows_per_call} must be >= 1.")

  need(config.optim.lr > 0 and 0.0 <= config.optim.ema_decay < 1.0,
       "config.optim.lr must be positive and optim.ema_decay in [0, 1).")
  t = config.train
  need(t.num_steps > 0 and t.log_every > 0 and t.ckpt_every > 0 and t.eval_every > 0,
       "config.train.num_steps, log_every, ckpt_every and eval_every must be positive.")
  if config.stage == 2:
    need(config.emotion.depth >= 1 and 0.0 <= config.emotion.drop_prob < 1.0,
         "config.emotion.depth must be at least 1 and config.emotion.drop_prob in [0, 1).")


def from_saved(saved: Mapping[str, Any], source: str) -> ml_collections.ConfigDict:
  """A saved config (the dict read from its JSON file `source`) upgraded, validated as a saved run's (no device
  count) and locked; a config that fails stops with one sentence naming `source`."""
  try:
    config = upgrade(saved)
    validate(config)
  except UserError as e:
    raise UserError(f"Config {source}: {e}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:   # a field missing or of the wrong kind
    raise UserError(f"Config {source} is not a config this project wrote ({type(e).__name__}: {e}); pass the "
                    "workdir of a launch.py run.") from None
  config.lock()
  return config


def load_saved(path: str) -> ml_collections.ConfigDict:
  """The config JSON file at `path` (a workdir's config.json), through `from_saved`."""
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"Config {path} cannot be read ({e}); restore it or start a new --workdir.") from None
  if not isinstance(saved, dict):
    raise UserError(f"Config {path} holds no JSON object; restore it or start a new --workdir.")
  return from_saved(saved, path)


def to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)
