"""The renderer API every pipeline uses: LivePortrait's F, M, W, G and stitching/retargeting, jitted.

    renderer = Renderer.load("weights/liveportrait")            # converted by pipelines/convert.py
    f_s = renderer.extract_appearance(crop[None])                 # once per portrait
    src = renderer.extract_motion(crop[None])                     # pitch/yaw/roll (deg), exp, t, scale, kp
    x_s = renderer.keypoints(src)                                 # s * (kp @ R + exp) + t
    x_d = renderer.stitch(x_s, renderer.keypoints(driving))       # driving motion from anywhere
    frames = renderer.warp_decode(f_s, x_s, x_d)                  # [B, 512, 512, 3] in [0, 1]

Images are NHWC float in [0, 1] (crops of `crop_size`, 256 for the released weights); keypoints [B, 21, 3].
Every network call is a `jax.jit`-compiled pure function of (parameters, inputs): the modules are split once
with `nnx.split` and merged inside the traced function, so calls compile once per input shape and never
capture parameters as constants. Parameters are float32; `dtype` (float32 by default, or bfloat16) is the
compute dtype of the networks, and every output is float32.

Motion dicts use the project's motion-space shapes (`playmate_jax.motion`): pitch, yaw, roll [B] in degrees,
exp and kp [B, 21, 3], t [B, 3], scale [B] (LivePortrait keeps a trailing axis of 1 on the angles and scale;
here they are squeezed so that `motion.transform_keypoints` and `motion.relative_motion` broadcast right).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from playmate_jax import motion, shapes
from playmate_jax.errors import UserError
from playmate_jax.renderer.config import RELEASED_MODEL_PARAMS, TINY_MODEL_PARAMS
from playmate_jax.renderer.networks import abstract_networks
CROP_SIZE = 256  # LivePortrait feeds its networks 256x256 face crops

KIND = "liveportrait"
RANDOM_WARNING = ("Renderer.random: the renderer has RANDOM weights; its images and motion are meaningless "
                  "(use Renderer.load on converted LivePortrait weights for real output).")

_COMPONENTS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator",
               "stitching_retargeting_module")


def jit_module(module: nnx.Module, fn: Callable) -> tuple[Callable, Any]:
  """(jitted pure fn(state, *args), state) for `fn(module, *args)`; the graph definition is static, and only
  this module's parameters cross the jit boundary (a call's host cost grows with the leaves it passes)."""
  graphdef, state = nnx.split(module)

  @jax.jit
  def run(state, *args):
    return fn(nnx.merge(graphdef, state), *args)

  return run, state


def _batch_to(x: jax.Array, n: int) -> jax.Array:
  """x [1, ...] broadcast to [n, ...] (x [n, ...] unchanged)."""
  return jnp.broadcast_to(x, (n,) + x.shape[1:]) if x.shape[0] == 1 and n != 1 else x


# --- pure functions of the modules (traced inside jax.jit) ----------------------------------------------------

def _appearance(f, images):
  return f(_images(images)).astype(jnp.float32)


def _motion(m, images):
  images = _images(images)
  out = m(images)
  b = images.shape[0]
  return dict(pitch=motion.bins_to_degrees(out["pitch"]), yaw=motion.bins_to_degrees(out["yaw"]),
              roll=motion.bins_to_degrees(out["roll"]), exp=out["exp"].reshape(b, -1, 3), t=out["t"],
              scale=out["scale"][:, 0], kp=out["kp"].reshape(b, -1, 3))


def _stitch(s, kp_source, kp_driving):
  b, k = kp_driving.shape[:2]
  kp_source = _batch_to(kp_source, b)
  delta = s.stitching(jnp.concatenate([kp_source.reshape(b, -1), kp_driving.reshape(b, -1)], axis=-1))
  delta = delta.astype(jnp.float32)
  kp = kp_driving + delta[:, :3 * k].reshape(b, k, 3)
  return kp.at[..., :2].add(delta[:, None, 3 * k:3 * k + 2])


def _retarget(mlp_name):
  def run(s, kp_source, ratio):
    b, k = kp_source.shape[0], kp_source.shape[1]
    feat = jnp.concatenate([kp_source.reshape(b, -1), ratio.reshape(b, -1)], axis=-1)
    return getattr(s, mlp_name)(feat).astype(jnp.float32).reshape(b, k, 3)
  return run


def _warp_decode(wg, feature_3d, kp_source, kp_driving):
  w, g = wg
  b = kp_driving.shape[0]
  out = w(_batch_to(feature_3d, b), _batch_to(kp_source, b), kp_driving)["out"]
  return g(out).astype(jnp.float32)


class Renderer:
  """LivePortrait's networks behind jitted, pure calls (see the module docstring)."""

  def __init__(self, networks: nnx.Module, model_params: Mapping[str, Any], *, dtype: Any = jnp.float32,
               crop_size: int = CROP_SIZE):
    self.model_params = dict(model_params)
    self.dtype = jnp.dtype(dtype)
    self.crop_size = int(crop_size)
    self.networks = networks  # for inspection and tests; calls go through the jitted functions below
    nets = {name: getattr(networks, name) for name in _COMPONENTS}
    self._f = jit_module(nets["appearance_feature_extractor"], _appearance)
    self._m = jit_module(nets["motion_extractor"], _motion)
    self._wg = jit_module(nnx.List([nets["warping_module"], nets["spade_generator"]]), _warp_decode)
    retargeting = nets["stitching_retargeting_module"]
    self._s = jit_module(retargeting, _stitch)
    self._eye = jit_module(retargeting, _retarget("eye"))
    self._lip = jit_module(retargeting, _retarget("lip"))
    self._render_size: int | None = None

  # --- construction -------------------------------------------------------------------------------------------

  @classmethod
  def load(cls, path: str, dtype: Any = jnp.float32, crop_size: int = CROP_SIZE) -> "Renderer":
    """From a folder written by `python pipelines/convert.py liveportrait` (UserError if it is not one)."""
    config, params = shapes.load_converted(path, KIND)
    networks = abstract_networks(config, dtype)
    shapes.check_covers(shapes.abstract_params(networks), params, f"LivePortrait weights in {path}")
    return cls(shapes.with_params(networks, params), config, dtype=dtype, crop_size=crop_size)

  @classmethod
  def random(cls, config: Mapping[str, Any] | None = None, seed: int = 0, dtype: Any = jnp.float32,
             crop_size: int = CROP_SIZE) -> "Renderer":
    """Randomly initialized networks (for tests and demos), full size unless `config` says otherwise."""
    logging.getLogger(__name__).warning(RANDOM_WARNING)
    config = dict(config or RELEASED_MODEL_PARAMS)
    networks = abstract_networks(config, dtype)
    params = shapes.random_params(shapes.abstract_params(networks), seed)  # on the host: no compile per shape
    return cls(shapes.with_params(networks, params), config, dtype=dtype, crop_size=crop_size)

  @classmethod
  def from_spec(cls, spec: str, dtype: Any = jnp.float32) -> "Renderer":
    """What the command lines' `--renderer` names: a converted weights folder, `random` (random networks of the
    released sizes: meaningless output, for trying a pipeline) or `random:tiny` (tiny ones on 64x64 crops).
    `dtype` is a dtype or its name ("float32", "bfloat16"), as the command lines' `--dtype` gives it."""
    dtype = jnp.dtype(dtype)
    if spec == "random":
      return cls.random(dtype=dtype)
    if spec == "random:tiny":
      return cls.random(TINY_MODEL_PARAMS, dtype=dtype, crop_size=64)
    if not os.path.isdir(spec):
      raise UserError(f"Renderer weights folder {spec} does not exist; convert LivePortrait's weights with "
                      "`python pipelines/convert.py liveportrait --src .../liveportrait --dst DIR` and pass DIR "
                      "(or `random` to try the pipeline with random weights).")
    return cls.load(spec, dtype=dtype)

  # --- networks -------------------------------------------------------------------------------------------------

  def extract_appearance(self, crops: jax.Array) -> jax.Array:
    """F: crops [B, H, W, 3] in [0, 1] -> feature volume [B, D, H/4, W/4, C] (float32)."""
    run, state = self._f
    return run(state, crops)

  def extract_motion(self, crops: jax.Array) -> dict[str, jax.Array]:
    """M: crops [B, H, W, 3] -> dict(pitch, yaw, roll [B] degrees, exp [B, 21, 3], t [B, 3], scale [B],
    kp [B, 21, 3]) (angles from the 66-bin heads by `motion.bins_to_degrees`)."""
    run, state = self._m
    return run(state, crops)

  def keypoints(self, m: Mapping[str, jax.Array]) -> jax.Array:
    """x = scale * (kp @ R + exp) + t (tz dropped) for a motion dict; 'rotation' [B, 3, 3] is used if given."""
    if "rotation" in m:
      return _transform_with_matrix(m["kp"], m["rotation"], m["exp"], m["t"], m["scale"])
    return _transform(m["kp"], m["pitch"], m["yaw"], m["roll"], m["exp"], m["t"], m["scale"])

  def stitch(self, kp_source: jax.Array, kp_driving: jax.Array) -> jax.Array:
    """LivePortrait's stitching: kp_driving [B, K, 3] plus the MLP's delta from (kp_source, kp_driving)
    flattened (its first 3K outputs added to every coordinate, the last two to x and y). kp_source may have
    batch 1."""
    run, state = self._s
    return run(state, _f32(kp_source), _f32(kp_driving))

  def retarget_eyes(self, kp_source: jax.Array, eye_close_ratio: jax.Array) -> jax.Array:
    """LivePortrait's eye retargeting delta [B, K, 3] (to add to keypoints) from kp_source [B, K, 3] and the
    ratios [B, 3]: the source's left- and right-eye close ratios and the wanted (driving) one."""
    run, state = self._eye
    return run(state, _f32(kp_source), _f32(eye_close_ratio))

  def retarget_lips(self, kp_source: jax.Array, lip_close_ratio: jax.Array) -> jax.Array:
    """LivePortrait's lip retargeting delta [B, K, 3] from kp_source [B, K, 3] and the ratios [B, 2]: the
    source's lip close ratio and the wanted (driving) one."""
    run, state = self._lip
    return run(state, _f32(kp_source), _f32(lip_close_ratio))

  def warp_decode(self, feature_3d: jax.Array, kp_source: jax.Array, kp_driving: jax.Array) -> jax.Array:
    """W then G: images [B, R, R, 3] in [0, 1] (R = 512 for 256 crops at the released sizes). feature_3d and
    kp_source may have batch 1 (one portrait driven by a batch of keypoints)."""
    run, state = self._wg
    return run(state, jnp.asarray(feature_3d), _f32(kp_source), _f32(kp_driving))

  def warp_decode_bytes(self, batch: int) -> int:
    """Device bytes `warp_decode` needs beyond its inputs when it renders `batch` frames of one portrait: XLA's
    temporary buffers (convolution workspaces included) and the images, from the compiled program's memory
    analysis. Compiles (or loads) that program, the one the render calls then run."""
    crops = jax.ShapeDtypeStruct((1, self.crop_size, self.crop_size, 3), jnp.float32)
    feature = jax.eval_shape(self.extract_appearance, crops)
    kp_s = jax.ShapeDtypeStruct((1, self.num_kp, 3), jnp.float32)
    kp_d = jax.ShapeDtypeStruct((batch, self.num_kp, 3), jnp.float32)
    run, state = self._wg
    memory = run.lower(state, feature, kp_s, kp_d).compile().memory_analysis()
    return int(memory.temp_size_in_bytes + memory.output_size_in_bytes)

  @property
  def render_size(self) -> int:
    """Side of `warp_decode`'s images for crops of `crop_size`."""
    if self._render_size is None:
      crops = jax.ShapeDtypeStruct((1, self.crop_size, self.crop_size, 3), jnp.float32)
      feature = jax.eval_shape(self.extract_appearance, crops)
      kp = jax.ShapeDtypeStruct((1, self.num_kp, 3), jnp.float32)
      self._render_size = int(jax.eval_shape(self.warp_decode, feature, kp, kp).shape[1])
    return self._render_size

  @property
  def num_kp(self) -> int:
    return int(self.model_params["motion_extractor_params"].get("num_kp", motion.NUM_KP))


# Jitted: one program to load, not one per jnp operation (eager operations are programs of their own).
_transform = jax.jit(motion.transform_keypoints)
_transform_with_matrix = jax.jit(motion.transform_keypoints_with_matrix)


def _images(x) -> jax.Array:
  """Images as float32 in [0, 1] (uint8 ones divided by 255); traced inside the networks' jitted calls."""
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x.astype(jnp.float32)


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)

