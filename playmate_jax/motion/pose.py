"""Head pose: LivePortrait's 66 angle bins, Euler angles in degrees and rotation matrices."""

import jax
import jax.numpy as jnp

NUM_BINS = 66
BIN_DEGREES = 3.0
BIN_OFFSET = 97.5


def bins_to_degrees(logits: jax.Array) -> jax.Array:
  """Angle in degrees from the motion extractor's 66 bin logits [..., 66]: E_softmax[bin] * 3 - 97.5."""
  probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return jnp.sum(probs * jnp.arange(NUM_BINS, dtype=jnp.float32), axis=-1) * BIN_DEGREES - BIN_OFFSET


def rotation_matrix(pitch: jax.Array, yaw: jax.Array, roll: jax.Array) -> jax.Array:
  """Rotation [..., 3, 3] for row-vector keypoints (x @ R), angles in degrees.

  LivePortrait's convention: R = (Rz(roll) @ Ry(yaw) @ Rx(pitch))^T.
  """
  x, y, z = (jnp.deg2rad(jnp.asarray(a, jnp.float32)) for a in (pitch, yaw, roll))
  x, y, z = jnp.broadcast_arrays(x, y, z)
  one, zero = jnp.ones_like(x), jnp.zeros_like(x)

  def mat(rows):
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)

  rx = mat([[one, zero, zero], [zero, jnp.cos(x), -jnp.sin(x)], [zero, jnp.sin(x), jnp.cos(x)]])
  ry = mat([[jnp.cos(y), zero, jnp.sin(y)], [zero, one, zero], [-jnp.sin(y), zero, jnp.cos(y)]])
  rz = mat([[jnp.cos(z), -jnp.sin(z), zero], [jnp.sin(z), jnp.cos(z), zero], [zero, zero, one]])
  return jnp.swapaxes(rz @ ry @ rx, -1, -2)


def matrix_to_degrees(rotation: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(pitch, yaw, roll) in degrees with rotation_matrix(pitch, yaw, roll) == rotation.

  The inverse of `rotation_matrix`; unique for |yaw| < 90 degrees (yaw is returned in [-90, 90]).
  """
  r = jnp.asarray(rotation, jnp.float32)
  # r is M^T with M = Rz Ry Rx, so M[i, j] = r[..., j, i].
  pitch = jnp.arctan2(r[..., 1, 2], r[..., 2, 2])
  yaw = jnp.arctan2(-r[..., 0, 2], jnp.hypot(r[..., 0, 0], r[..., 0, 1]))
  roll = jnp.arctan2(r[..., 0, 1], r[..., 0, 0])
  return jnp.rad2deg(pitch), jnp.rad2deg(yaw), jnp.rad2deg(roll)
