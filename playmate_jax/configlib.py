"""Configs: load `configs/NAME.py[:variant]`, apply `--config.a.b=value` overrides, validate, save as JSON.

Every mistake here is a `UserError` with one sentence naming the file or key and the fix.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from playmate_jax.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


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


def validate(config: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1) -> None:
  """Rejects values that cannot work, before anything expensive starts."""
  def need(ok: bool, message: str):
    if not ok:
      raise UserError(message)

  d, m = config.data, config.model
  need(d.name in ("demo", "playmate_clips"),
       f"config.data.name is {d.name!r}; use 'demo' or 'playmate_clips' (a preprocessed dataset in data.data_dir).")
  need(d.window > 0 and d.prev_frames >= 0 and d.audio_context >= 0,
       "config.data.window must be positive and data.prev_frames and data.audio_context non-negative.")
  need(d.batch_size > 0 and d.batch_size % num_devices == 0,
       f"config.data.batch_size={d.batch_size} must be a positive multiple of the {num_devices} devices in use.")
  need(d.batch_size % process_count == 0,
       f"config.data.batch_size={d.batch_size} must be divisible by the {process_count} processes in use.")
  need(d.worker_count >= 0 and d.read_threads >= 0 and d.read_buffer >= 0,
       "config.data.worker_count, data.read_threads and data.read_buffer must be >= 0 (0: none).")
  need(m.dim % m.num_heads == 0, f"config.model.dim={m.dim} must be divisible by model.num_heads={m.num_heads}.")
  need(m.conv_kernel % 2 == 1, f"config.model.conv_kernel={m.conv_kernel} must be odd.")
  need(m.dtype in DTYPES, f"config.model.dtype is {m.dtype!r}; use one of {', '.join(DTYPES)}.")
  need(0.0 <= m.audio_drop_prob < 1.0, "config.model.audio_drop_prob must be in [0, 1).")
  need(config.diffusion.schedule in ("cosine", "linear"),
       f"config.diffusion.schedule is {config.diffusion.schedule!r}; use 'cosine' or 'linear'.")
  need(0 < config.sample.ddim_steps <= config.diffusion.num_timesteps,
       "config.sample.ddim_steps must be between 1 and diffusion.num_timesteps.")
  need(config.sample.windows_per_call >= 1, "config.sample.windows_per_call must be at least 1.")
  need(config.optim.lr > 0 and 0.0 <= config.optim.ema_decay < 1.0,
       "config.optim.lr must be positive and optim.ema_decay in [0, 1).")
  t = config.train
  need(t.num_steps > 0 and t.log_every > 0 and t.ckpt_every > 0 and t.eval_every > 0,
       "config.train.num_steps, log_every, ckpt_every and eval_every must be positive.")


def to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)
