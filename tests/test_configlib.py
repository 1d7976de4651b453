"""configlib owns the config: `upgrade` fills what a saved config from an earlier version lacks with what it meant,
`validate` holds every check, and every saved config read back (a workdir's config.json, a checkpoint's config)
goes through both, stopping with one sentence that names the file."""

import json
import os
import shutil

import jax
import pytest

from playmate_jax import configlib
from playmate_jax.data import loader
from playmate_jax.errors import UserError
from playmate_jax.generator import dit
from playmate_jax.generator.factory import window_sampler
from playmate_jax import run as run_lib
from playmate_jax.train import mesh as mesh_lib
from playmate_jax.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = [os.path.join(ROOT, "configs", f"stage{stage}.py") + variant
         for stage in (1, 2) for variant in ("", ":demo", ":tiny")]

# The fields that configs saved by the first stage-2 version lack, and the stage-1 fields added after the first
# training version (the wav2vec2 encoder's): what an old run's config.json looks like.
OLD_MISSING = ("model.attention", "sample.windows_per_call", "data.windows_per_clip", "data.source_expression",
               "data.start_prob", "data.read_threads", "data.read_buffer", "eval.classifier", "audio.weights",
               "audio.layers", "audio.layer_reduce", "audio.chunk_seconds", "audio.overlap_seconds",
               "audio.chunk_batch", "audio.dtype")


def tiny(which: int = 1, **overrides):
  """configs/stage{which}.py:tiny with overrides {"a.b": value}."""
  spec = os.path.join(ROOT, "configs", f"stage{which}.py") + ":tiny"
  return configlib.apply_overrides(configlib.load_config(spec), {k: str(v) for k, v in overrides.items()})


def old_saved(stage: int) -> dict:
  """The tiny config as a run of an earlier version saved it: JSON without the fields added since."""
  saved = json.loads(configlib.to_json(tiny(stage)))
  for key in OLD_MISSING:
    *parents, name = key.split(".")
    node = saved
    for part in parents:
      node = node[part]
    node.pop(name, None)
  return saved


def write_json(path, value) -> str:
  with open(path, "w") as f:
    json.dump(value, f)
  return str(path)


@pytest.mark.parametrize("spec", SPECS, ids=[os.path.basename(s) for s in SPECS])
def test_upgrade_is_a_no_op_on_the_configs(spec):
  config = configlib.load_config(spec)
  before = configlib.to_json(config)
  assert configlib.upgrade(config) is config
  assert configlib.to_json(config) == before
  configlib.validate(config, num_devices=1)


@pytest.mark.parametrize("stage", [1, 2])
def test_an_old_saved_config_is_upgraded_with_what_it_meant(tmp_path, stage):
  config = configlib.load_saved(write_json(tmp_path / "config.json", old_saved(stage)))
  assert config.is_locked and config.stage == stage and config.model.dim == tiny(stage).model.dim
  assert config.model.attention == "auto" and config.sample.windows_per_call == 8
  assert config.data.windows_per_clip == 1
  assert (config.data.source_expression, config.data.start_prob) == ("clip", 0.0)
  assert (config.data.read_threads, config.data.read_buffer) == (16, 500)   # Grain's default ReadOptions
  assert (config.audio.encoder, config.audio.weights, config.audio.dtype) == ("mel", "", "float32")
  if stage == 2:
    assert config.eval.classifier.to_dict() == {"steps": 500, "lr": 0.5, "l2": 1e-3, "max_clips": None}
  else:
    assert "classifier" not in config.eval
  # What the modules that read these fields make of them.
  assert loader.source_settings(config) == ("clip", 0.0)
  assert dit.attention_kernel(config.model) == "xla"
  assert window_sampler(config, config.audio.n_mels).max_windows == 8
  # Every field a current config has, nothing else.
  def keys(tree, prefix=""):
    return {prefix + k for k, v in tree.items() if not isinstance(v, dict)} | {
        key for k, v in tree.items() if isinstance(v, dict) for key in keys(v, prefix + k + ".")}
  assert keys(config.to_dict()) == keys(tiny(stage).to_dict())


def test_validate_holds_every_check():
  configlib.validate(tiny())          # a saved run's config: no device count
  cases = [({}, {"num_devices": 3}, "batch_size=8 must be a positive multiple of the 3 devices"),
           ({}, {"process_count": 3}, "batch_size=8 must be divisible by the 3 processes"),
           ({"data.windows_per_clip": 3}, {}, r"windows_per_clip=3 must be >= 1 and divide the per-process batch \(8"),
           ({"data.window": 0}, {}, "config.data.window=0"),
           ({"model.num_heads": 3}, {}, "config.model.dim=32 is not divisible by config.model.num_heads=3"),
           ({"model.conv_kernel": 4}, {}, "config.model.conv_kernel=4 must be odd"),
           ({"model.dtype": "int8"}, {}, "config.model.dtype='int8' is not supported"),
           ({"model.attention": "flash"}, {}, "config.model.attention='flash' is unknown"),
           ({"diffusion.num_timesteps": 0}, {}, "config.diffusion.num_timesteps=0 must be at least 1"),
           ({"diffusion.schedule": "quadratic"}, {}, "config.diffusion.schedule='quadratic' is unknown"),
           ({"diffusion.schedule": "linear", "diffusion.beta_end": 1.5}, {}, "beta_start <= beta_end < 1"),
           ({"sample.ddim_steps": 101}, {}, "config.sample.ddim_steps=101 must be between 1 and"),
           ({"sample.eta": -1.0}, {}, "config.sample.eta=-1.0 must be >= 0"),
           ({"sample.windows_per_call": 0}, {}, "config.sample.windows_per_call=0 must be >= 1"),
           ({"data.source_expression": "mean"}, {}, "config.data.source_expression='mean' is unknown"),
           ({"data.start_prob": 1.5}, {}, r"config.data.start_prob=1.5 must be in \[0, 1\]"),
           ({"stage": 3}, {}, "config.stage=3 is unknown")]
  for overrides, facts, message in cases:
    with pytest.raises(UserError, match=message) as e:
      configlib.validate(tiny(**overrides), **facts)
    assert "\n" not in str(e.value) and str(e.value).endswith("."), str(e.value)
  with pytest.raises(UserError, match="config.emotion.depth must be at least 1"):
    configlib.validate(tiny(2, **{"emotion.depth": 0}))


def test_an_invalid_saved_config_stops_with_one_sentence(tmp_path):
  bad = old_saved(1)
  bad["model"]["num_heads"] = 3
  path = write_json(tmp_path / "config.json", bad)
  with pytest.raises(UserError, match=r"^Config .*config\.json: config\.model\.dim=32 is not divisible by "
                                      r"config\.model\.num_heads=3; [^\n]*\.$"):
    configlib.load_saved(path)
  del bad["model"]
  with pytest.raises(UserError, match=r"^Config .*config\.json is not a config this project wrote"):
    configlib.load_saved(write_json(tmp_path / "config.json", bad))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(UserError, match=r"^Config .*config\.json cannot be read [^\n]*\.$"):
    configlib.load_saved(path)


def test_trainer_reads_the_workdir_config_through_configlib(tmp_path):
  """A workdir's config.json is upgraded (an old one resumes as it meant) and validated before anything starts."""
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  saved = old_saved(1)
  saved["data"]["worker_count"] = 2
  write_json(tmp_path / "config.json", saved)
  os.makedirs(tmp_path / "checkpoints" / "10")
  with pytest.raises(UserError, match="config.data.worker_count=2"):
    Trainer(tiny(), str(tmp_path), mesh=mesh)
  saved["data"]["worker_count"] = 0
  write_json(tmp_path / "config.json", saved)
  with pytest.raises(UserError, match="config.data.windows_per_clip=1"):   # what the old config means
    Trainer(tiny(**{"data.windows_per_clip": 2}), str(tmp_path), mesh=mesh)
  with pytest.raises(UserError, match=r"config.optim.flatten=False, and the optimizer's saved state depends on it; "
                                      r"resume with --config.optim.flatten=False"):   # an old run: tree moments
    Trainer(tiny(**{"optim.flatten": True}), str(tmp_path), mesh=mesh)
  saved["model"]["dtype"] = "int8"
  write_json(tmp_path / "config.json", saved)
  with pytest.raises(UserError, match=r"^Config .*config\.json: config\.model\.dtype='int8' is not supported"):
    Trainer(tiny(), str(tmp_path), mesh=mesh)
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json"]   # nothing written


def test_restored_checkpoint_configs_are_upgraded_and_validated(stage1_run, tmp_path):
  def copy_with_config(name, edit):
    workdir = tmp_path / name
    shutil.copytree(stage1_run, workdir)
    for step in os.listdir(workdir / "checkpoints"):
      path = workdir / "checkpoints" / step / "config" / run_lib.CONFIG_FILE
      if path.is_file():
        write_json(path, edit(json.loads(path.read_text())))
    return workdir

  def old(saved):
    saved["model"].pop("attention")
    saved["sample"].pop("windows_per_call")
    saved["data"].pop("windows_per_clip")
    return saved

  run = run_lib.restore_run(str(copy_with_config("old", old)))
  assert run.config.is_locked and run.config.model.attention == "auto"
  assert run.config.sample.windows_per_call == 8 and run.config.data.windows_per_clip == 1

  def invalid(saved):
    saved["model"]["num_heads"] = 3
    return saved

  with pytest.raises(UserError, match=r"^Config .*checkpoints/\d+/config/metadata: config\.model\.dim=32 is not "
                                      r"divisible by config\.model\.num_heads=3; [^\n]*\.$"):
    run_lib.restore_run(str(copy_with_config("invalid", invalid)))
