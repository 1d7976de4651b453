"""Implicit keypoints: the LivePortrait transform, relative-motion composition and mouth opening."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from playmate_jax.motion.pose import matrix_to_degrees, rotation_matrix

NUM_KP = 21

# LivePortrait's lip keypoints (its "lip" animation region) and the two that its "lip close <-> open" edit
# moves vertically: 19 down (+y, lower lip, weight 1e-3) and 17 up (-y, upper lip, weight 1e-4).
LIP_KP = (6, 12, 14, 17, 19, 20)
UPPER_LIP_KP = 17
LOWER_LIP_KP = 19


def as_keypoints(x: jax.Array) -> jax.Array:
  """[..., 21, 3] from [..., 21, 3] or flattened [..., 63]."""
  x = jnp.asarray(x, jnp.float32)
  return x.reshape(x.shape[:-1] + (NUM_KP, 3)) if x.shape[-1] == NUM_KP * 3 else x


def transform_keypoints_with_matrix(kp: jax.Array, rotation: jax.Array, exp: jax.Array, t: jax.Array,
                                    scale: jax.Array) -> jax.Array:
  """x = scale * (kp @ rotation + exp) + t, with only tx, ty applied (tz dropped). Returns [..., 21, 3].

  kp, exp: [..., 21, 3] (or [..., 63]); rotation [..., 3, 3]; t [..., 3] (or [..., 2]); scale [...].
  """
  x = as_keypoints(kp) @ jnp.asarray(rotation, jnp.float32) + as_keypoints(exp)
  x = x * jnp.asarray(scale, jnp.float32)[..., None, None]
  t = jnp.asarray(t, jnp.float32)
  return x.at[..., :2].add(t[..., None, :2])


def transform_keypoints(kp: jax.Array, pitch: jax.Array, yaw: jax.Array, roll: jax.Array, exp: jax.Array,
                        t: jax.Array, scale: jax.Array) -> jax.Array:
  """x = scale * (kp @ R(pitch, yaw, roll) + exp) + t (tz dropped); angles in degrees. Returns [..., 21, 3]."""
  return transform_keypoints_with_matrix(kp, rotation_matrix(pitch, yaw, roll), exp, t, scale)


def _rotation(motion: Mapping) -> jax.Array:
  if "rotation" in motion:
    return jnp.asarray(motion["rotation"], jnp.float32)
  return rotation_matrix(motion["pitch"], motion["yaw"], motion["roll"])


def relative_motion(source: Mapping, driving: Mapping, driving_first: Mapping) -> dict[str, jax.Array]:
  """LivePortrait's relative composition of a driving frame onto the source (as for a driving video).

  Each argument is a dict with 'exp' [..., 21, 3] (or [..., 63]), 't' [..., 3], 'scale' [...] and either
  'rotation' [..., 3, 3] or 'pitch', 'yaw', 'roll' (degrees), e.g. `unpack_motion`'s output. Returns
    rotation = R_d @ R_d0^T @ R_s,  exp = exp_s + (exp_d - exp_d0),  scale = s_s * s_d / s_d0,
    t = t_s + (t_d - t_d0) with tz = 0,
  plus 'pitch', 'yaw', 'roll' of that rotation (see `matrix_to_degrees`), so the result can be re-packed with
  `pack_motion` and rendered with `transform_keypoints_with_matrix`.
  """
  rot_d = _rotation(driving)
  rot = rot_d @ jnp.swapaxes(_rotation(driving_first), -1, -2) @ _rotation(source)
  exp = as_keypoints(source["exp"]) + (as_keypoints(driving["exp"]) - as_keypoints(driving_first["exp"]))
  scale = jnp.asarray(source["scale"], jnp.float32) * (
      jnp.asarray(driving["scale"], jnp.float32) / jnp.asarray(driving_first["scale"], jnp.float32))
  t = jnp.asarray(source["t"], jnp.float32) + (
      jnp.asarray(driving["t"], jnp.float32) - jnp.asarray(driving_first["t"], jnp.float32))
  t = t.at[..., 2].set(0.0)
  pitch, yaw, roll = matrix_to_degrees(rot)
  return dict(exp=exp, pitch=pitch, yaw=yaw, roll=roll, t=t, scale=scale, rotation=rot)


def mouth_opening(exp: jax.Array) -> jax.Array:
  """The project's one measure of mouth opening, a fixed linear function of exp [..., 21, 3] (or [..., 63]).

  mouth_opening = exp[..., 19, y] - exp[..., 17, y]: the vertical gap between the lower-lip (19) and
  upper-lip (17) expression deformations, in keypoint units (y points down, as in the image). These are the
  two lip keypoints that LivePortrait's own "lip close <-> open" edit moves apart, so that edit with
  strength v raises this measure by 1.1e-3 * v. Returns [...].
  """
  exp = as_keypoints(exp)
  return exp[..., LOWER_LIP_KP, 1] - exp[..., UPPER_LIP_KP, 1]


# (upper lid, lower lid) keypoints of the two eyes: LivePortrait's eye edits move 11 and 15 down and 13 and 16 up
# to close the eyes.
EYE_LIDS = ((11, 13), (15, 16))


def eye_opening(exp: jax.Array) -> jax.Array:
  """Mean lower-minus-upper lid y gap of the two eyes, from keypoints or exp [..., 21, 3] (or [..., 63]); [...]."""
  exp = as_keypoints(exp)
  return sum(exp[..., lower, 1] - exp[..., upper, 1] for upper, lower in EYE_LIDS) / len(EYE_LIDS)
