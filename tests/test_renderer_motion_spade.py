"""LivePortrait's motion extractor M, SPADE decoder G and stitching/retargeting MLPs: parity with PyTorch's
reference numbers through the torch-free converters, converter strictness, spectral-norm folding, full-size
layouts, bf16.

Parity vectors: `<parity_dir>/liveportrait` (models.yaml, base_models/, retargeting_models/, reference.npz in
NCHW); every size comes from its models.yaml, so another vector set in the same layout needs no change here.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from playmate_jax.convert.common import SourceDict, conv_kernel
from playmate_jax.shapes import check_covers
from playmate_jax.convert.liveportrait import motion_extractor as convert_me
from playmate_jax.convert.liveportrait import spade as convert_spade
from playmate_jax.convert.liveportrait import stitching as convert_stitching
from playmate_jax.convert.torch_io import load_torch_file, save_torch_file
from playmate_jax.errors import UserError
from playmate_jax.renderer.motion_extractor import HEADS, MotionExtractor
from playmate_jax.renderer.spade import SPADEDecoder, pixel_shuffle
from playmate_jax.renderer.stitching import RetargetMLP, StitchingRetargeting

ME_FILE = "base_models/motion_extractor.pth"
SPADE_FILE = "base_models/spade_generator.pth"
RETARGET_FILE = "retargeting_models/stitching_retargeting_module.pth"
RETARGET_PARTS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}
TOL = 1e-4


def _dir(parity_dir):
  return os.path.join(parity_dir, "liveportrait")


def _model_params(parity_dir):
  with open(os.path.join(_dir(parity_dir), "models.yaml")) as f:
    return yaml.safe_load(f)["model_params"]


def _reference(parity_dir):
  with np.load(os.path.join(_dir(parity_dir), "reference.npz")) as data:
    return {k: data[k] for k in data.files}


def _nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _load(module, params):
  """`module` (usually abstract, from nnx.eval_shape: random init is slow on CPU) with `params` loaded."""
  state = nnx.state(module, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(module, state)
  return module


def _source(parity_dir, file):
  path = os.path.join(_dir(parity_dir), file)
  return SourceDict(load_torch_file(path), path, strip_prefixes=("module.",))


def _retarget_sources(path):
  saved = load_torch_file(path)
  return {part: SourceDict(saved[name], f"{path}[{name}]", strip_prefixes=("module.",))
          for part, name in RETARGET_PARTS.items()}


def _motion_extractor(parity_dir, dtype=jnp.float32):
  cfg = _model_params(parity_dir)["motion_extractor_params"]
  params = convert_me.convert(_source(parity_dir, ME_FILE), cfg)
  return _load(nnx.eval_shape(lambda: MotionExtractor(cfg, dtype=dtype, rngs=nnx.Rngs(0))), params)


def _decoder(parity_dir, dtype=jnp.float32):
  cfg = _model_params(parity_dir)["spade_generator_params"]
  params = convert_spade.convert(_source(parity_dir, SPADE_FILE), cfg)
  return _load(nnx.eval_shape(lambda: SPADEDecoder(cfg, dtype=dtype, rngs=nnx.Rngs(0))), params)


def _forward(module, *args):
  graph, state = nnx.split(module)
  return jax.jit(lambda s, *a: nnx.merge(graph, s)(*a))(state, *args)


# --- parity ----------------------------------------------------------------------------------------------------

@pytest.mark.parity
def test_motion_extractor_parity(parity_dir):
  ref = _reference(parity_dir)
  model = _motion_extractor(parity_dir)
  for who in ("source", "driving"):
    out = _forward(model, _nhwc(ref[f"{who}_image"]))
    assert sorted(out) == sorted(HEADS)
    for head in HEADS:
      err = _rel(out[head], ref[f"{who}_{head}"])
      assert err <= TOL, f"{who} {head}: relative L2 error {err:.2e}"


@pytest.mark.parity
def test_spade_decoder_parity(parity_dir):
  ref = _reference(parity_dir)
  image = _forward(_decoder(parity_dir), _nhwc(ref["warp_out"]))
  assert image.dtype == jnp.float32
  err = _rel(image, np.transpose(ref["generator_image"], (0, 2, 3, 1)))
  assert err <= TOL, f"generator_image: relative L2 error {err:.2e}"


@pytest.mark.parity
def test_stitching_retargeting_parity(parity_dir):
  ref = _reference(parity_dir)
  cfg = _model_params(parity_dir)["stitching_retargeting_module_params"]
  params = convert_stitching.convert(_retarget_sources(os.path.join(_dir(parity_dir), RETARGET_FILE)), cfg)
  model = _load(nnx.eval_shape(lambda: StitchingRetargeting(cfg, rngs=nnx.Rngs(0))), params)
  for part in ("stitching", "lip", "eye"):
    out = getattr(model, part)(jnp.asarray(ref[f"{part}_input"]))
    err = _rel(out, ref[f"{part}_output"])
    assert err <= TOL, f"{part}: relative L2 error {err:.2e}"


@pytest.mark.parity
def test_bf16_close_to_reference_parity(parity_dir):
  """bf16 compute is a choice, not exact: it must stay near the float32 reference and return float32."""
  ref = _reference(parity_dir)
  heads = _forward(_motion_extractor(parity_dir, jnp.bfloat16), _nhwc(ref["source_image"]))
  for head in ("pitch", "exp", "kp"):
    assert heads[head].dtype == jnp.float32
    assert _rel(heads[head], ref[f"source_{head}"]) < 5e-2, head
  image = _forward(_decoder(parity_dir, jnp.bfloat16), _nhwc(ref["warp_out"]))
  assert image.dtype == jnp.float32
  assert _rel(image, np.transpose(ref["generator_image"], (0, 2, 3, 1))) < 5e-2


@pytest.mark.parity
def test_spade_converter_folds_spectral_norm_parity(parity_dir):
  """In the converted reference checkpoint, each spectral conv is weight_orig / (u . W v), not weight_orig."""
  raw = load_torch_file(os.path.join(_dir(parity_dir), SPADE_FILE))
  params = convert_spade.convert(_source(parity_dir, SPADE_FILE), _model_params(parity_dir)["spade_generator_params"])
  for key, kernel in (("G_middle_0.conv_0", params["G_middle"][0]["conv_0"]["kernel"]),
                      ("up_1.conv_s", params["up_1"]["conv_s"]["kernel"])):
    w, u, v = (raw[f"{key}.weight_{s}"].astype(np.float64) for s in ("orig", "u", "v"))
    sigma = u @ (w.reshape(w.shape[0], -1) @ v)
    assert abs(sigma - 1.0) > 1e-3  # the fold is visible
    np.testing.assert_allclose(kernel, conv_kernel(w / sigma), rtol=1e-6, atol=1e-7)


# --- spectral norm ---------------------------------------------------------------------------------------------

def test_spectral_norm_uses_stored_u_v():
  """Folded kernel == weight_orig / (u . W v) with the stored u, v (which are not the singular vectors here)."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
  u = rng.normal(size=6).astype(np.float32)
  v = rng.normal(size=36).astype(np.float32)
  source = SourceDict({"c.weight_orig": w, "c.weight_u": u, "c.weight_v": v}, "test.pth")
  kernel = convert_spade.spectral_conv_kernel(source, "c", 6, 4, 3)
  source.finish()
  sigma = float(u.astype(np.float64) @ (w.reshape(6, -1).astype(np.float64) @ v))
  assert kernel.shape == (3, 3, 4, 6)
  np.testing.assert_allclose(kernel, np.transpose(w / sigma, (2, 3, 1, 0)), rtol=1e-6)
  largest = np.linalg.svd(w.reshape(6, -1), compute_uv=False)[0]
  assert not np.allclose(kernel, np.transpose(w / largest, (2, 3, 1, 0)), rtol=1e-3)


# --- converter strictness --------------------------------------------------------------------------------------

def _convert_file(kind, path, cfg):
  if kind == "stitching":
    return convert_stitching.convert(_retarget_sources(path), cfg)
  module = convert_me if kind == "motion_extractor" else convert_spade
  return module.convert(SourceDict(load_torch_file(path), path, strip_prefixes=("module.",)), cfg)


def _edit(state, key, edit):
  """Apply `edit` ('remove' | 'extra' | 'shape') to `key` of a state dict; returns the key to be named."""
  if edit == "remove":
    del state[key]
    return key
  if edit == "extra":
    state[key + "_extra"] = np.zeros(3, np.float32)
    return key + "_extra"
  state[key] = np.zeros(state[key].shape[:-1] + (state[key].shape[-1] + 1,), np.float32)
  return key


CASES = [("motion_extractor", ME_FILE, "detector.stages.2.1.grn.gamma", None),
         ("motion_extractor", ME_FILE, "detector.fc_exp.weight", None),
         ("spade_generator", SPADE_FILE, "up_0.conv_s.weight_v", None),
         ("spade_generator", SPADE_FILE, "G_middle_3.norm_1.mlp_beta.bias", None),
         ("stitching", RETARGET_FILE, "module.mlp.4.weight", "retarget_eye")]


@pytest.mark.parametrize("edit", ["remove", "extra", "shape"])
@pytest.mark.parametrize("kind,file,key,entry", CASES)
def test_converter_strict(parity_dir, tmp_path, kind, file, key, entry, edit):
  params = _model_params(parity_dir)
  cfg = params["stitching_retargeting_module_params" if kind == "stitching" else f"{kind}_params"]
  saved = load_torch_file(os.path.join(_dir(parity_dir), file))
  saved = {k: dict(v) for k, v in saved.items()} if entry else dict(saved)
  named = _edit(saved[entry] if entry else saved, key, edit)
  path = str(tmp_path / "edited.pth")
  save_torch_file(path, saved)
  with pytest.raises(UserError, match=named.removeprefix("module.").replace(".", r"\.")):
    _convert_file(kind, path, cfg)


def test_stitching_converter_needs_every_part():
  with pytest.raises(UserError, match="eye"):
    convert_stitching.convert({"stitching": SourceDict({}, "x"), "lip": SourceDict({}, "x")},
                              {"stitching": {}, "lip": {}, "eye": {}})


# --- full-size layouts -----------------------------------------------------------------------------------------

def _from_manifest(entry):
  """A state dict of small constant arrays with the manifest's keys and shapes (fast; values irrelevant)."""
  return {k: np.full(shape, 0.01, np.float32) for k, (shape, _) in entry.items()}


def _abstract(make):
  """The module's parameter tree as zero-stride arrays of the right shapes (nothing allocated)."""
  return jax.tree.map(lambda x: np.broadcast_to(np.float32(0), x.shape),
                      nnx.to_pure_dict(nnx.state(nnx.eval_shape(make), nnx.Param)))


def test_full_size_converters_cover_models(parity_dir):
  """The released checkpoints' keys and shapes (full_size_manifest.json) convert into exactly the parameter
  trees of the full-size modules built from the released models.yaml."""
  with open(os.path.join(_dir(parity_dir), "full_size_manifest.json")) as f:
    manifest = json.load(f)
  params, files = manifest["models.yaml"], manifest["files"]
  for kind, file, module in (("motion_extractor", ME_FILE, MotionExtractor),
                             ("spade_generator", SPADE_FILE, SPADEDecoder)):
    cfg = params[f"{kind}_params"]
    conv = convert_me if kind == "motion_extractor" else convert_spade
    converted = conv.convert(SourceDict(_from_manifest(files[file]), file), cfg)
    check_covers(_abstract(lambda m=module, c=cfg: m(c, rngs=nnx.Rngs(0))), converted, kind)
  cfg = params["stitching_retargeting_module_params"]
  sources = {part: SourceDict(_from_manifest(files[RETARGET_FILE][name]), name, strip_prefixes=("module.",))
             for part, name in RETARGET_PARTS.items()}
  check_covers(_abstract(lambda: StitchingRetargeting(cfg, rngs=nnx.Rngs(0))),
               convert_stitching.convert(sources, cfg), "stitching_retargeting_module")


def test_full_size_decoder_shapes():
  """64x64x256 feature -> 512x512 image (released sizes), and without PixelShuffle 4x only (upscale 1)."""
  cfg = {"upscale": 2, "block_expansion": 64, "max_features": 512, "num_down_blocks": 2}
  model = nnx.eval_shape(lambda: SPADEDecoder(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 64, 64, 256), jnp.float32))
  assert out.shape == (1, 512, 512, 3) and out.dtype == jnp.float32
  tiny = nnx.eval_shape(lambda: SPADEDecoder({"upscale": 1, "block_expansion": 4, "max_features": 8,
                                               "num_down_blocks": 1}, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  _load(tiny, jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32),
                           nnx.to_pure_dict(nnx.state(tiny, nnx.Param))))
  image = _forward(tiny, jnp.ones((2, 4, 4, 8)))
  assert image.shape == (2, 16, 16, 3)
  assert bool(jnp.all((image >= 0) & (image <= 1)))


# --- small pieces ----------------------------------------------------------------------------------------------

def test_pixel_shuffle_matches_torch_layout():
  """torch.nn.PixelShuffle(2) on NCHW: out[c, 2h + i, 2w + j] = in[4c + 2i + j, h, w]."""
  x = np.arange(2 * 12 * 3 * 5, dtype=np.float32).reshape(2, 3, 5, 12)  # NHWC
  out = np.asarray(pixel_shuffle(jnp.asarray(x), 2))
  assert out.shape == (2, 6, 10, 3)
  for c, h, w, i, j in ((0, 0, 0, 1, 0), (2, 2, 4, 1, 1), (1, 1, 3, 0, 1)):
    assert out[1, 2 * h + i, 2 * w + j, c] == x[1, h, w, 4 * c + 2 * i + j]


def test_retarget_mlp_relu_between_layers_only():
  mlp = RetargetMLP(3, [4], 2, rngs=nnx.Rngs(0))
  x = jnp.asarray([[1.0, -2.0, 0.5]])
  w0, b0 = mlp.layers[0].kernel[...], mlp.layers[0].bias[...]
  w1, b1 = mlp.layers[1].kernel[...], mlp.layers[1].bias[...]
  np.testing.assert_allclose(mlp(x), jax.nn.relu(x @ w0 + b0) @ w1 + b1, rtol=1e-6)
