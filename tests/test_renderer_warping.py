"""LivePortrait's appearance extractor F and warping module W: parity with the PyTorch reference vectors,
3-D grid sampling against a direct numpy transcription of PyTorch's formula, and converter strictness."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from playmate_jax.convert.common import SourceDict
from playmate_jax.convert.liveportrait import appearance as convert_appearance
from playmate_jax.convert.liveportrait import warping as convert_warping
from playmate_jax.convert.torch_io import load_torch_file, save_torch_file
from playmate_jax.errors import UserError
from playmate_jax.renderer.appearance import AppearanceFeatureExtractor
from playmate_jax.renderer.grid_sample import grid_sample_3d
from playmate_jax.renderer.warping import WarpingNetwork, make_coordinate_grid

AFE_FILE = "base_models/appearance_feature_extractor.pth"
WARP_FILE = "base_models/warping_module.pth"
COMPONENTS = {  # name -> (file, module class, converter, models.yaml key)
    "appearance": (AFE_FILE, AppearanceFeatureExtractor, convert_appearance.convert,
                   "appearance_feature_extractor_params"),
    "warping": (WARP_FILE, WarpingNetwork, convert_warping.convert, "warping_module_params"),
}


# --- helpers -------------------------------------------------------------------------------------------------

def _lp_dir(parity_dir: str) -> str:
  return os.path.join(parity_dir, "liveportrait")


def _model_params(parity_dir: str) -> dict:
  with open(os.path.join(_lp_dir(parity_dir), "models.yaml")) as f:
    data = yaml.safe_load(f)
  return data.get("model_params", data)


def _relative_l2(ours, ref) -> float:
  ours = np.asarray(jnp.asarray(ours, jnp.float32), np.float64)
  ref = np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _converted(parity_dir: str, name: str, dtype=jnp.float32) -> nnx.Module:
  """The module with converted weights (built abstractly: random initialization would only be replaced)."""
  file, cls, convert, key = COMPONENTS[name]
  path = os.path.join(_lp_dir(parity_dir), file)
  cfg = _model_params(parity_dir)[key]
  params = convert(SourceDict(load_torch_file(path), path), cfg)
  module = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
  state = nnx.state(module, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  nnx.update(module, state)
  return module


@nnx.jit
def _run_afe(model, image):
  return model(image)


@nnx.jit
def _run_warp(model, feature, kp_source, kp_driving):
  return model(feature, kp_source, kp_driving)


# --- parity with LivePortrait ---------------------------------------------------------------------------------

@pytest.mark.parity
def test_appearance_parity(parity_dir):
  ref = np.load(os.path.join(_lp_dir(parity_dir), "reference.npz"))
  cfg = _model_params(parity_dir)["appearance_feature_extractor_params"]
  model = _converted(parity_dir, "appearance")
  feature = _run_afe(model, jnp.asarray(ref["source_image"].transpose(0, 2, 3, 1)))
  b, _, h, w = ref["source_image"].shape
  down = 2 ** cfg["num_down_blocks"]
  assert feature.shape == (b, cfg["reshape_depth"], h // down, w // down, cfg["reshape_channel"])
  assert _relative_l2(feature, ref["feature_3d"].transpose(0, 2, 3, 4, 1)) <= 1e-4


@pytest.mark.parity
def test_warping_parity(parity_dir):
  ref = np.load(os.path.join(_lp_dir(parity_dir), "reference.npz"))
  cfg = _model_params(parity_dir)["warping_module_params"]
  model = _converted(parity_dir, "warping")
  feature = jnp.asarray(ref["feature_3d"].transpose(0, 2, 3, 4, 1))
  kp_source, kp_driving = jnp.asarray(ref["warp_kp_source"]), jnp.asarray(ref["warp_kp_driving"])
  out = _run_warp(model, feature, kp_source, kp_driving)
  b, d, h, w, _ = feature.shape
  assert out["out"].shape == (b, h, w, cfg["block_expansion"] * 2 ** cfg["num_down_blocks"])
  assert out["deformation"].shape == (b, d, h, w, 3)
  assert _relative_l2(out["occlusion_map"], ref["warp_occlusion_map"].transpose(0, 2, 3, 1)) <= 1e-4
  assert _relative_l2(out["deformation"], ref["warp_deformation"]) <= 1e-4
  assert _relative_l2(out["out"], ref["warp_out"].transpose(0, 2, 3, 1)) <= 1e-4
  # The keypoint roles matter: swapped source and driving give a clearly different flow.
  swapped = _run_warp(model, feature, kp_driving, kp_source)
  assert _relative_l2(swapped["deformation"], ref["warp_deformation"]) > 1e-3


@pytest.mark.parity
def test_bf16_close_to_reference_parity(parity_dir):
  """bf16 compute keeps float32 geometry: the flow stays near-exact, features within bf16 rounding."""
  ref = np.load(os.path.join(_lp_dir(parity_dir), "reference.npz"))
  afe = _converted(parity_dir, "appearance", jnp.bfloat16)
  feature = _run_afe(afe, jnp.asarray(ref["source_image"].transpose(0, 2, 3, 1)))
  assert feature.dtype == jnp.bfloat16
  assert _relative_l2(feature, ref["feature_3d"].transpose(0, 2, 3, 4, 1)) <= 2e-2
  warp = _converted(parity_dir, "warping", jnp.bfloat16)
  out = _run_warp(warp, jnp.asarray(ref["feature_3d"].transpose(0, 2, 3, 4, 1)),
                  jnp.asarray(ref["warp_kp_source"]), jnp.asarray(ref["warp_kp_driving"]))
  assert out["deformation"].dtype == jnp.float32
  assert _relative_l2(out["deformation"], ref["warp_deformation"]) <= 1e-3
  assert _relative_l2(out["occlusion_map"], ref["warp_occlusion_map"].transpose(0, 2, 3, 1)) <= 1e-2
  assert _relative_l2(out["out"], ref["warp_out"].transpose(0, 2, 3, 1)) <= 2e-2


# --- grid sampling --------------------------------------------------------------------------------------------

def _torch_grid_sample_3d(volume: np.ndarray, grid: np.ndarray) -> np.ndarray:
  """PyTorch's grid_sample(volume [N,C,D,H,W], grid [N,d,h,w,3], 'bilinear', 'zeros', align_corners=False),
  written out point by point in float64."""
  n, c, depth, height, width = volume.shape
  out = np.zeros((n, c) + grid.shape[1:4])
  for b in range(n):
    for k, j, i in np.ndindex(*grid.shape[1:4]):
      x, y, z = grid[b, k, j, i].astype(np.float64)
      ix, iy, iz = ((x + 1) * width - 1) / 2, ((y + 1) * height - 1) / 2, ((z + 1) * depth - 1) / 2
      x0, y0, z0 = np.floor(ix), np.floor(iy), np.floor(iz)
      value = np.zeros(c)
      for zc, wz in ((z0, z0 + 1 - iz), (z0 + 1, iz - z0)):
        for yc, wy in ((y0, y0 + 1 - iy), (y0 + 1, iy - y0)):
          for xc, wx in ((x0, x0 + 1 - ix), (x0 + 1, ix - x0)):
            if 0 <= xc < width and 0 <= yc < height and 0 <= zc < depth:
              value += wx * wy * wz * volume[b, :, int(zc), int(yc), int(xc)]
      out[b, :, k, j, i] = value
  return out


def _test_grid(rng: np.random.Generator, shape: tuple[int, ...], sizes: tuple[int, int, int]) -> np.ndarray:
  """Random points in [-1.6, 1.6] plus the borders -1 and 1, voxel edges and centres, and far-away points."""
  grid = rng.uniform(-1.6, 1.6, shape + (3,))
  flat = grid.reshape(-1, 3)
  specials = []
  for axis, size in enumerate(sizes):  # sizes in (x, y, z) order
    edges = 2 * np.arange(size + 1) / size - 1                  # voxel edges, -1 and 1 among them
    centres = (2 * np.arange(size) + 1) / size - 1
    outside = np.array([-1 - 1 / size, 1 + 1 / size, -1 - 2 / size, 1 + 2 / size, -1e6, 1e6])
    specials += [(axis, v) for v in np.concatenate([edges, centres, outside])]
  chosen = rng.choice(len(flat), size=len(specials), replace=False)
  for row, (axis, v) in zip(chosen, specials):
    flat[row, axis] = v
  flat[chosen[:6]] = [[-1, -1, -1], [1, 1, 1], [-1, 1, -1], [1, -1, 1], [3, 0, 0], [0, 0, -3]]
  return flat.reshape(grid.shape).astype(np.float32)


def test_grid_sample_matches_pytorch_formula():
  rng = np.random.default_rng(0)
  d, h, w, c = 3, 4, 5, 2
  volume = rng.normal(size=(2, c, d, h, w)).astype(np.float32)
  grid = _test_grid(rng, (2, 3, 5, 6), (w, h, d))
  expected = _torch_grid_sample_3d(volume, grid)
  ours = jax.jit(grid_sample_3d)(jnp.asarray(volume.transpose(0, 2, 3, 4, 1)), jnp.asarray(grid))
  assert ours.shape == (2, 3, 5, 6, c)
  np.testing.assert_allclose(np.asarray(ours), expected.transpose(0, 2, 3, 4, 1), rtol=1e-5, atol=1e-5)
  # Far-away points read exact zeros; non-finite ones too, without poisoning the output.
  far = jnp.asarray([[[[1e9, 0, 0], [jnp.inf, 0, 0], [jnp.nan, 0, 0], [0, -jnp.inf, 0]]]], jnp.float32)
  assert np.array_equal(np.asarray(grid_sample_3d(jnp.asarray(volume[:1].transpose(0, 2, 3, 4, 1)), far)),
                        np.zeros((1, 1, 4, c)))


def test_grid_sample_voxel_centres_and_dtype():
  rng = np.random.default_rng(1)
  d, h, w = 3, 4, 6
  volume = jnp.asarray(rng.normal(size=(1, d, h, w, 5)), jnp.float32)
  z, y, x = np.meshgrid(*[(2 * np.arange(n) + 1) / n - 1 for n in (d, h, w)], indexing="ij")
  grid = jnp.asarray(np.stack([x, y, z], -1)[None], jnp.float32)
  np.testing.assert_allclose(np.asarray(grid_sample_3d(volume, grid)), np.asarray(volume), atol=1e-6)
  half = grid_sample_3d(volume.astype(jnp.bfloat16), grid)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(volume), atol=2e-2)


def test_coordinate_grid_layout():
  grid = np.asarray(make_coordinate_grid(3, 4, 5))
  assert grid.shape == (3, 4, 5, 3)
  np.testing.assert_array_equal(grid[0, 0, 0], [-1, -1, -1])
  np.testing.assert_array_equal(grid[-1, -1, -1], [1, 1, 1])
  np.testing.assert_allclose(grid[2, 1, 3], [2 * 3 / 4 - 1, 2 * 1 / 3 - 1, 1], atol=1e-7)  # (x, y, z)


# --- converters -----------------------------------------------------------------------------------------------

def _rewritten(tmp_path, parity_dir: str, file: str, edit) -> str:
  # np.asarray: 0-d tensors (num_batches_tracked) load as numpy scalars, which save_torch_file does not write.
  state = {k: np.asarray(v) for k, v in load_torch_file(os.path.join(_lp_dir(parity_dir), file)).items()}
  edit(state)
  path = os.path.join(tmp_path, os.path.basename(file))
  save_torch_file(path, state)
  return path


@pytest.mark.parametrize("name", sorted(COMPONENTS))
@pytest.mark.parametrize("mistake", ["missing", "extra", "shape"])
def test_converter_strict(tmp_path, parity_dir, name, mistake):
  file, _, convert, key = COMPONENTS[name]
  target = {"appearance": "resblocks_3d.3dr1.norm1.running_var",
            "warping": "dense_motion_network.hourglass.decoder.up_blocks.1.conv.weight"}[name]
  if mistake == "extra":
    target = "unexpected.weight"

  def edit(state):
    if mistake == "missing":
      del state[target]
    elif mistake == "extra":
      state[target] = np.zeros(3, np.float32)
    else:
      shape = state[target].shape
      state[target] = np.zeros(shape[:-1] + (shape[-1] + 1,), np.float32)

  path = _rewritten(tmp_path, parity_dir, file, edit)
  with pytest.raises(UserError, match=target.replace(".", r"\.")) as error:
    convert(SourceDict(load_torch_file(path), path), _model_params(parity_dir)[key])
  assert path in str(error.value)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_converter_full_size_shapes(parity_dir, name):
  """Checkpoints shaped as the released ones (from the manifest) convert to exactly the full-size model."""
  with open(os.path.join(_lp_dir(parity_dir), "full_size_manifest.json")) as f:
    manifest = json.load(f)
  file, cls, convert, key = COMPONENTS[name]
  cfg = manifest["models.yaml"][key]
  state = {k: np.ones(shape, np.dtype(dtype)) for k, (shape, dtype) in manifest["files"][file].items()}
  params = convert(SourceDict(state, file), cfg)
  model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  assert _shapes(params) == _shapes(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
