"""LivePortrait conversion end to end: the released folder layout -> converted folder -> renderer.

The component parity tests (test_renderer_*.py) check each network against the reference vectors; these check
the whole folder conversion: parity through `convert_dir`, the released full sizes (random state dicts built
from full_size_manifest.json, rendered to a 512x512 image), and one clear sentence for every broken input.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from playmate_jax import shapes
from playmate_jax.convert.liveportrait import RETARGETING_FILE, convert_dir
from playmate_jax.convert.torch_io import load_torch_file, save_torch_file
from playmate_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel_l2(ours, ref):
  return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def load_networks(folder):
  from playmate_jax.renderer.networks import networks_with_params
  return networks_with_params(*shapes.load_converted(folder, "liveportrait"))


@pytest.mark.parity
def test_convert_dir_parity_warp_then_decode(parity_dir, tmp_path):
  """W then G from the converted folder reproduce the reference image (the chain, not each part alone)."""
  src = os.path.join(parity_dir, "liveportrait")
  convert_dir(src, tmp_path / "lp")
  ref = np.load(os.path.join(src, "reference.npz"))
  nets = load_networks(tmp_path / "lp")
  to_last = lambda x: np.moveaxis(x, 1, -1)
  warped = nets.warping_module(to_last(ref["feature_3d"]), ref["warp_kp_source"], ref["warp_kp_driving"])
  image = nets.spade_generator(warped["out"])
  assert rel_l2(image, to_last(ref["generator_image"])) <= 1e-4
  feature = nets.appearance_feature_extractor(to_last(ref["source_image"]))
  assert rel_l2(feature, to_last(ref["feature_3d"])) <= 1e-4


def random_state_dict(spec: dict, rng) -> dict:
  """Random tensors for {key: [shape, dtype]} (BatchNorm variances positive, counters integer)."""
  out = {}
  for key, (shape, dtype) in spec.items():
    if dtype == "int64":
      out[key] = np.array(rng.integers(0, 1000), np.int64).reshape(shape)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
      out[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def full_size_folder(parity_dir, tmp_path_factory):
  """The released layout at full size, random weights, written with torch.save's format."""
  with open(os.path.join(parity_dir, "liveportrait", "full_size_manifest.json")) as f:
    manifest = json.load(f)
  root = tmp_path_factory.mktemp("released") / "liveportrait"
  rng = np.random.default_rng(0)
  for file, spec in manifest["files"].items():
    os.makedirs(root / os.path.dirname(file), exist_ok=True)
    nested = all(isinstance(v, dict) for v in spec.values())
    state = ({name: random_state_dict(s, rng) for name, s in spec.items()} if nested
             else random_state_dict(spec, rng))
    save_torch_file(root / file, state)
  with open(root / "models.yaml", "w") as f:
    import yaml
    yaml.safe_dump({"model_params": manifest["models.yaml"]}, f)
  return root, manifest


@pytest.mark.parity
def test_full_size_parity_manifest_converts_and_renders_512(full_size_folder, tmp_path):
  import jax
  from playmate_jax.renderer.networks import abstract_params
  src, manifest = full_size_folder
  params = convert_dir(src, tmp_path / "full")
  # convert_dir is strict both ways: every released tensor used, every model parameter covered.
  n_model = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(manifest["models.yaml"])))
  n_converted = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  assert n_model == n_converted
  nets = load_networks(tmp_path / "full")
  crop = np.random.default_rng(1).uniform(0, 1, (1, 256, 256, 3)).astype(np.float32)
  feature = nets.appearance_feature_extractor(crop)
  motion = nets.motion_extractor(crop)
  kp = np.asarray(motion["kp"]).reshape(1, 21, 3)
  image = np.asarray(nets.spade_generator(nets.warping_module(feature, kp, kp)["out"]))
  assert image.shape == (1, 512, 512, 3)
  assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def copy_parity(parity_dir, tmp_path):
  dst = tmp_path / "liveportrait"
  shutil.copytree(os.path.join(parity_dir, "liveportrait"), dst)
  for root, _, files in os.walk(dst):
    for f in files:
      os.chmod(os.path.join(root, f), 0o644)
  return dst


def edit_file(path, edit):
  state = load_torch_file(path)
  edit(state)
  save_torch_file(path, state)


@pytest.mark.parametrize("change, expected", [
    ("remove", "has no tensor 'first.conv.bias'"),
    ("extra", "has tensor 'first.conv.extra'"),
    ("shape", "tensor 'first.conv.bias' has shape (3,)"),
])
def test_parity_dir_broken_checkpoint_is_one_sentence(parity_dir, tmp_path, change, expected):
  src = copy_parity(parity_dir, tmp_path)
  path = src / "base_models" / "appearance_feature_extractor.pth"
  edits = {
      "remove": lambda s: s.pop("first.conv.bias"),
      "extra": lambda s: s.__setitem__("first.conv.extra", np.zeros(3, np.float32)),
      "shape": lambda s: s.__setitem__("first.conv.bias", np.zeros(3, np.float32)),
  }
  edit_file(path, edits[change])
  with pytest.raises(UserError) as e:
    convert_dir(src, tmp_path / "out")
  assert expected in str(e.value) and "appearance_feature_extractor.pth" in str(e.value)
  assert not (tmp_path / "out" / shapes.PARAMS_FILE).exists()


def test_parity_dir_broken_retargeting_and_missing_file(parity_dir, tmp_path):
  src = copy_parity(parity_dir, tmp_path)
  edit_file(src / RETARGETING_FILE, lambda s: s["retarget_mouth"].pop(next(iter(s["retarget_mouth"]))))
  with pytest.raises(UserError, match=r"retarget_mouth.*has no tensor 'mlp\.0\.weight'"):
    convert_dir(src, tmp_path / "out")
  os.remove(src / "base_models" / "warping_module.pth")
  with pytest.raises(UserError, match="warping_module.pth is missing"):
    convert_dir(src, tmp_path / "out")


def test_cli_reports_one_line(tmp_path):
  result = subprocess.run([sys.executable, os.path.join(ROOT, "pipelines", "convert.py"), "liveportrait",
                           "--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "out")],
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and "is missing" in result.stderr
